#!/usr/bin/env bash
# Runs every test: unit tests, golden SQL files (tests/slt) and differential tests.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-targets "$@"
