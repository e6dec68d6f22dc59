//! What the connectors' integration tests share with the workspace's: a real
//! Kafka-protocol broker (tansu) started and stopped per test.

#[path = "../../../tests/common/mod.rs"]
mod shared;

pub use shared::*;
