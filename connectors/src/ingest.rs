//! What `sluice ingest` runs: a Kafka table landed in a lake table, exactly
//! once, as an ordinary checkpointed query.
//!
//! The job is `INSERT INTO <lake> SELECT * FROM <kafka>` with checkpoints on,
//! kept under the name `ingest-<lake table>`. Nothing about it is private to
//! ingestion: the Kafka source resumes from the offsets in the newest
//! checkpoint, and the lake sink stages its files and renames them into place
//! when their checkpoint completes, so a job killed at any moment and started
//! again leaves each record in the lake once. Records that do not decode are
//! handled as the Kafka table's `bad_data` says, as in any query.
//!
//! The job reads in a consumer group of its own, `sluice-ingest-<lake table>`
//! (unless the Kafka table names one), so no query reading the same table moves
//! its offsets. The offsets committed there, once the files holding their
//! records are in the lake, are where a job without a checkpoint starts (with
//! the default `scan.startup.mode`, `group-offsets`): a job started anew, its
//! checkpoints deleted, goes on where the last one left off.

use std::collections::BTreeMap;

use crate::error::{ConnectorError, Result};
use crate::kafka::{KafkaConfig, StartupMode};
use crate::lake::LakeConfig;
use crate::registry::TableSpec;

/// An ingestion job, ready to be run by a SQL session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestJob {
    /// The statement to run (with checkpoints on).
    pub statement: String,
    /// The name its checkpoints are kept under (`pipeline.name`).
    pub pipeline_name: String,
    /// The Kafka table's options with the job's consumer group set (the
    /// table's own, or `sluice-ingest-<lake table>`).
    pub source_options: BTreeMap<String, String>,
}

impl IngestJob {
    /// The job landing the Kafka table `source` in the lake table `sink`, whose
    /// columns it takes by position. Fails, naming what is wrong, when the
    /// tables are of other connectors, their options are invalid or their
    /// columns differ in number.
    pub fn plan(source: &TableSpec, sink: &TableSpec) -> Result<Self> {
        if source.connector != "kafka" {
            return Err(ConnectorError::Role { connector: source.connector.clone(), role: "source of `sluice ingest` (--from names a kafka table)" });
        }
        if sink.connector != "lake" {
            return Err(ConnectorError::Role { connector: sink.connector.clone(), role: "sink of `sluice ingest` (--to names a lake table)" });
        }
        let kafka = KafkaConfig::from_table(source)?;
        LakeConfig::from_table(sink)?;
        // A bounded query's lake output is its whole result: when it ends, the
        // lake sink deletes what earlier runs of it wrote. That is right for a
        // run that reads the same records again, and loses records for one
        // that goes on where the last one stopped.
        if kafka.bounded.is_bounded() && !matches!(kafka.startup, StartupMode::Earliest | StartupMode::Timestamp(_)) {
            return Err(ConnectorError::Option {
                connector: "kafka".into(),
                key: "scan.bounded.mode".into(),
                reason: "a bounded ingest replaces what its earlier runs landed when it ends, so it must read from a fixed \
                         start: set 'scan.startup.mode' to 'earliest' or 'timestamp' (or leave the table unbounded)"
                    .into(),
            });
        }
        let (read, written) = (source.schema.fields().len(), sink.schema.fields().len());
        if read != written {
            return Err(ConnectorError::Schema {
                table: sink.name.clone(),
                reason: format!("it has {written} columns and '{}' has {read}: they must have the same columns", source.name),
            });
        }
        let mut source_options = source.options.clone();
        if !source_options.contains_key("group.id") && !source_options.contains_key("properties.group.id") {
            source_options.insert("group.id".to_string(), format!("sluice-ingest-{}", sink.name));
        }
        Ok(IngestJob {
            statement: format!("INSERT INTO {} SELECT * FROM {}", quote(&sink.name), quote(&source.name)),
            pipeline_name: format!("ingest-{}", sink.name),
            source_options,
        })
    }
}

/// `name` as a quoted SQL identifier: catalog names are kept as written.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl From<arrow::error::ArrowError> for ConnectorError {
    fn from(e: arrow::error::ArrowError) -> Self {
        ConnectorError::External { connector: "arrow".into(), message: e.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn table(name: &str, connector: &str, columns: usize, options: &[(&str, &str)]) -> TableSpec {
        let fields: Vec<Field> = (0..columns).map(|i| Field::new(format!("c{i}"), DataType::Int64, true)).collect();
        let options = options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        TableSpec::new(name, Arc::new(Schema::new(fields)), connector, options)
    }

    const KAFKA: &[(&str, &str)] = &[("topic", "clicks"), ("bootstrap.servers", "127.0.0.1:9092")];

    #[test]
    fn the_job_is_a_checkpointed_insert_in_a_group_of_its_own() -> Result<()> {
        let job = IngestJob::plan(&table("clicks", "kafka", 2, KAFKA), &table("Lake \"1\"", "lake", 2, &[("path", "/tmp/lake")]))?;
        assert_eq!(job.statement, "INSERT INTO \"Lake \"\"1\"\"\" SELECT * FROM \"clicks\"");
        assert_eq!(job.pipeline_name, "ingest-Lake \"1\"");
        assert_eq!(job.source_options.get("group.id").map(String::as_str), Some("sluice-ingest-Lake \"1\""));
        let named = [KAFKA, &[("properties.group.id", "mine")]].concat();
        let job = IngestJob::plan(&table("clicks", "kafka", 2, &named), &table("lake", "lake", 2, &[("path", "/tmp/lake")]))?;
        assert_eq!(job.source_options.get("group.id"), None, "the table's group is kept");
        Ok(())
    }

    #[test]
    fn other_connectors_bad_options_and_other_columns_are_refused() {
        let lake = table("lake", "lake", 2, &[("path", "/tmp/lake")]);
        let error = |source: &TableSpec, sink: &TableSpec| IngestJob::plan(source, sink).err().map(|e| e.to_string()).unwrap_or_default();
        let e = error(&table("clicks", "file", 2, &[]), &lake);
        assert!(e.contains("'file'") && e.contains("--from"), "{e}");
        let e = error(&table("clicks", "kafka", 2, KAFKA), &table("out", "file", 2, &[]));
        assert!(e.contains("--to"), "{e}");
        let e = error(&table("clicks", "kafka", 2, &[KAFKA, &[("scan.bounded.mode", "soon")]].concat()), &lake);
        assert!(e.contains("scan.bounded.mode"), "{e}");
        let e = error(&table("clicks", "kafka", 3, KAFKA), &lake);
        assert!(e.contains("same columns"), "{e}");
        let bounded = [KAFKA, &[("scan.bounded.mode", "latest-offset")]].concat();
        let e = error(&table("clicks", "kafka", 2, &bounded), &lake);
        assert!(e.contains("scan.startup.mode"), "from the group's offsets, a bounded run would delete the last run's files: {e}");
        let from_the_start = [bounded.as_slice(), &[("scan.startup.mode", "earliest")]].concat();
        assert!(IngestJob::plan(&table("clicks", "kafka", 2, &from_the_start), &lake).is_ok());
    }
}
