//! `sluice ingest`: lands a Kafka topic in a Parquet lake with a progress display.
//!
//! The source and lake tables are declared in a SQL file (`--sql`); the job
//! commits Kafka offsets, in its own consumer group, only after the files holding
//! them are in the lake, and Ctrl-C or SIGTERM finishes the round in progress
//! before stopping.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use sluice_connectors::ingest::{run_ingest, IngestConfig, IngestProgress};
use sluice_connectors::kafka::KafkaConfig;
use sluice_connectors::lake::{LakeConfig, Partitioning};
use sluice_sql::Session;
use tokio_util::sync::CancellationToken;

/// Arguments of `sluice ingest`.
pub struct IngestArgs {
    pub sql: PathBuf,
    pub from: String,
    pub to: String,
    pub round_rows: usize,
    pub round_ms: u64,
}

fn describe(p: &IngestProgress) -> String {
    let lag: Vec<String> = p.lag.iter().map(|(part, l)| format!("p{part}:{l}")).collect();
    format!(
        "{} rows, {} files, {:.1} MiB, {} bad, {} already in lake; lag {}",
        p.rows,
        p.files,
        p.bytes as f64 / (1024.0 * 1024.0),
        p.bad_records,
        p.skipped_as_already_written,
        lag.join(" ")
    )
}

/// Ctrl-C (SIGINT) or SIGTERM: both end the job after the round in progress.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

pub async fn run(args: IngestArgs) -> anyhow::Result<()> {
    let ddl = std::fs::read_to_string(&args.sql).with_context(|| format!("reading {}", args.sql.display()))?;
    let mut session = Session::default();
    session.execute_script(&ddl).await?;
    let source = session.table_spec(&args.from)?;
    let sink = session.table_spec(&args.to)?;
    if source.connector != "kafka" || sink.connector != "lake" {
        bail!("ingest reads a kafka table (--from) into a lake table (--to)");
    }
    let kafka = KafkaConfig::from_table(&source)?;
    // The job's own group (unless `group.id` names one): queries reading the
    // same table keep theirs, so none moves the job's offsets.
    let group_id = kafka.group_id.clone().unwrap_or_else(|| format!("sluice-ingest-{}", sink.name));
    let lake = LakeConfig::from_table(&sink)?;
    let partitioning = Partitioning::try_new(&sink.name, &sink.schema, lake.partition_by.as_deref(), lake.time_column.as_deref())?;
    if source.schema.fields().len() != sink.schema.fields().len() {
        bail!("'{}' and '{}' must have the same columns", source.name, sink.name);
    }
    let cfg = IngestConfig {
        kafka,
        group_id,
        schema: source.schema.clone(),
        lake,
        partitioning,
        round_rows: args.round_rows,
        round_ms: args.round_ms,
    };
    let stop = CancellationToken::new();
    let on_ctrl_c = stop.clone();
    tokio::spawn(async move {
        stop_signal().await;
        on_ctrl_c.cancel();
    });
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new_spinner();
        bar.set_style(ProgressStyle::with_template("{spinner} {elapsed} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()));
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        bar
    });
    let total = run_ingest(cfg, stop, |p| {
        if let Some(bar) = &bar {
            bar.set_message(describe(p));
        }
    })
    .await?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    println!("ingest stopped: {}", describe(&total));
    Ok(())
}
