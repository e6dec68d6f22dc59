//! The Kafka side of `sluice-nexmark --kafka BROKER`: the Nexmark events put
//! into topics once, and the bench's tables declared over those topics.
//!
//! Reading events from a broker costs what reading them from memory does not:
//! fetching records, and decoding JSON into Arrow. To time that against the
//! pre-generated batches, the same events (same generator, seed and rate)
//! go into three topics, `<prefix>-person`, `<prefix>-auction` and
//! `<prefix>-bid`, one per table of `ddl.sql`, as JSON records. Sluice writes
//! them itself (`INSERT INTO` a `kafka` table `SELECT * FROM` the `nexmark`
//! table, delivery `at-least-once`, so without checkpoints every record goes
//! out as its batch comes), before any clock starts. Each query then reads the
//! topics through tables declared as in `ddl.sql` (same columns, same
//! WATERMARK) but with `connector = 'kafka'`, bounded from `earliest` to each
//! partition's end when the query starts (`scan.bounded.mode =
//! 'latest-offset'`), so it ends as over the pre-generated batches, its final
//! watermark closing every window.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use sluice_connectors::nexmark::NexmarkTable;
use sluice_sql::{Session, StatementOutput};

use crate::DDL;

/// Records per batch a source hands on: as many as a pre-generated batch
/// holds, so that both runs push batches of one size through the pipeline.
const SOURCE_BATCH_SIZE: usize = 8192;

/// The topic that holds table `table`'s records.
fn topic(prefix: &str, table: &str) -> String {
    format!("{prefix}-{table}")
}

/// Creates the three topics with `partitions` partitions each. Fails if one
/// exists already: its records would be counted with the new ones.
async fn create_topics(broker: &str, prefix: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", broker).create().context("creating a Kafka admin client")?;
    let names: Vec<String> = NexmarkTable::ALL.iter().map(|t| topic(prefix, t.name())).collect();
    let topics: Vec<NewTopic> = names.iter().map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1))).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics(&topics, &options).await.with_context(|| format!("creating topics at {broker}"))? {
        if let Err((name, code)) = result {
            bail!("creating topic {name} at {broker}: {code}");
        }
    }
    Ok(())
}

/// The `CREATE TABLE` statements of `ddl.sql`, each table named
/// `name(kind)` and declared `WITH (with(kind))`, where `kind` is its
/// `nexmark.table`; without their WATERMARK if `watermark` is false.
fn redeclare(name: impl Fn(&str) -> String, with: impl Fn(&str) -> String, watermark: bool) -> anyhow::Result<String> {
    let text: String = DDL.lines().filter(|l| !l.trim_start().starts_with("--")).map(|l| format!("{l}\n")).collect();
    let mut out = String::new();
    let mut kinds = Vec::new();
    for statement in text.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let kind = option_value(statement, "nexmark.table").context("ddl.sql: a table without 'nexmark.table'")?;
        let columns_end = statement.rfind("WITH (").context("ddl.sql: a table without WITH (...)")?;
        let head = statement[..columns_end].trim_end();
        let open = head.find('(').context("ddl.sql: a table without columns")?;
        let body = head[open + 1..].strip_suffix(')').context("ddl.sql: columns not closed before WITH")?;
        let columns: Vec<&str> = body.lines().filter(|l| watermark || !l.trim_start().starts_with("WATERMARK")).collect();
        let columns = columns.join("\n");
        out.push_str(&format!(
            "CREATE TABLE {} ({}\n) WITH ({});\n\n",
            name(kind),
            columns.trim_end().trim_end_matches(','),
            with(kind)
        ));
        kinds.push(kind);
    }
    let expected: Vec<&str> = NexmarkTable::ALL.iter().map(|t| t.name()).collect();
    if kinds != expected {
        bail!("ddl.sql declares {kinds:?}, expected {expected:?}");
    }
    Ok(out)
}

/// The quoted value of `'key' = 'value'` in `statement`.
fn option_value<'a>(statement: &'a str, key: &str) -> Option<&'a str> {
    let quoted = format!("'{key}'");
    let after = &statement[statement.find(&quoted)? + quoted.len()..];
    let value = after.trim_start().strip_prefix('=')?.trim_start().strip_prefix('\'')?;
    Some(&value[..value.find('\'')?])
}

/// The three tables over the topics of `prefix` at `broker`, read from the
/// start to the end each partition had when the query started, their
/// consumers configured with librdkafka's `properties` besides the defaults.
pub fn source_ddl(broker: &str, prefix: &str, properties: &[(String, String)]) -> anyhow::Result<String> {
    let mut extra = String::new();
    for (key, value) in properties {
        if key.contains('\'') || value.contains('\'') {
            bail!("a Kafka property may not hold a quote: {key}={value}");
        }
        extra.push_str(&format!(", 'properties.{key}' = '{value}'"));
    }
    redeclare(
        |kind| kind.to_string(),
        |kind| {
            format!(
                "'connector' = 'kafka', 'bootstrap.servers' = '{broker}', 'topic' = '{}', 'format' = 'json', \
                 'scan.startup.mode' = 'earliest', 'scan.bounded.mode' = 'latest-offset', 'batch.size' = '{SOURCE_BATCH_SIZE}'{extra}",
                topic(prefix, kind)
            )
        },
        true,
    )
}

/// Creates the topics of `prefix` at `broker` with `partitions` partitions
/// and writes into them the `events` Nexmark events at `events_per_second`
/// (in event time) that the pre-generated batches hold. Returns the records
/// written and the seconds it took.
pub async fn produce(broker: &str, prefix: &str, partitions: i32, events: u64, events_per_second: u64) -> anyhow::Result<(u64, f64)> {
    create_topics(broker, prefix, partitions).await?;
    let started = Instant::now();
    let generator = DDL
        .replace("'nexmark.max-events' = '1000000'", &format!("'nexmark.max-events' = '{events}'"))
        .replace("'nexmark.events-per-second' = '10000'", &format!("'nexmark.events-per-second' = '{events_per_second}'"));
    if generator.matches(&format!("'nexmark.max-events' = '{events}'")).count() != 3 {
        bail!("ddl.sql no longer sets 'nexmark.max-events' = '1000000' on each table");
    }
    let sinks = redeclare(
        |kind| format!("{kind}_topic"),
        |kind| {
            format!(
                "'connector' = 'kafka', 'bootstrap.servers' = '{broker}', 'topic' = '{}', 'format' = 'json', \
                 'sink.delivery-guarantee' = 'at-least-once'",
                topic(prefix, kind)
            )
        },
        false,
    )?;
    // One lane, so each partition gets its records in event-time order.
    let mut session = Session::default();
    session.set_parallelism(1);
    session.execute_script(&generator).await?;
    session.execute_script(&sinks).await?;
    let mut records = 0;
    for table in NexmarkTable::ALL {
        let name = table.name();
        let mut outputs = session.execute_script(&format!("INSERT INTO {name}_topic SELECT * FROM {name};")).await?;
        let Some(StatementOutput::Insert { mut job, .. }) = outputs.pop() else { bail!("INSERT INTO {name}_topic did not start a job") };
        job.wait().await.with_context(|| format!("writing {name} events into {}", topic(prefix, name)))?;
        records += job.metrics().rows_out;
    }
    Ok((records, started.elapsed().as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redeclared_tables_keep_their_columns_and_watermark_only_if_asked() -> anyhow::Result<()> {
        let sources = source_ddl("localhost:9092", "nx", &[("fetch.max.bytes".into(), "1000".into())])?;
        assert_eq!(sources.matches("WATERMARK FOR `dateTime`").count(), 3);
        assert!(sources.contains("CREATE TABLE bid (\n    auction  BIGINT,"));
        assert!(sources.contains("'topic' = 'nx-auction'"));
        assert!(!sources.contains("nexmark."));
        assert_eq!(sources.matches("'properties.fetch.max.bytes' = '1000')").count(), 3);
        assert!(source_ddl("b", "nx", &[("k".into(), "it's".into())]).is_err());

        let sinks = redeclare(|k| format!("{k}_topic"), |_| "'connector' = 'blackhole'".into(), false)?;
        assert!(!sinks.contains("WATERMARK"));
        assert!(sinks.contains("extra  VARCHAR\n) WITH ('connector' = 'blackhole');"));
        assert!(sinks.contains("CREATE TABLE person_topic ("));
        Ok(())
    }

    #[test]
    fn option_values_are_read_between_quotes() {
        assert_eq!(option_value("'nexmark.table' = 'bid',", "nexmark.table"), Some("bid"));
        assert_eq!(option_value("'nexmark.table'='bid'", "nexmark.table"), Some("bid"));
        assert_eq!(option_value("'other' = 'bid'", "nexmark.table"), None);
    }
}
