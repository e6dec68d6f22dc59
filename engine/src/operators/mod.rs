//! The operators a pipeline is made of.

pub mod alert_status;
pub mod grouping_sets;
mod hop_slices;
pub mod join;
pub mod session_aggregate;
mod session_slots;
pub mod stateless;
pub mod union;
mod state_table;
#[cfg(test)]
mod checkpoint_testing;
pub mod watermark_assigner;
pub mod updating_aggregate;
pub mod window_aggregate;
mod window_groups;
pub mod window_rank;

pub use alert_status::{AlertChanges, AlertSpec};
pub use grouping_sets::GroupingSetExpand;
pub use session_aggregate::SessionAggregate;
pub use stateless::StatelessOperator;
pub use union::UnionAll;
pub use watermark_assigner::WatermarkAssigner;
pub use window_aggregate::WindowAggregate;
pub use window_rank::{RankSpec, WindowRank};
pub use updating_aggregate::UpdatingAggregate;
pub use join::{EventTime, JoinKind, JoinMode, JoinSpec, SideTimes, StreamJoin, TemporalJoin};
