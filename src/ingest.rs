//! `sluice ingest`: lands a Kafka topic in a Parquet lake with a progress display.
//!
//! The source and lake tables are declared in a SQL file (`--sql`, which may
//! also `SET` settings); the job is the checkpointed query
//! `sluice_connectors::ingest` describes, run by a session like any other. Its
//! checkpoints go under `.sluice/checkpoints/ingest-<lake table>` unless the
//! command line or the file says otherwise, and a job started again resumes
//! from the newest. Ctrl-C or SIGTERM stops it gracefully (a final checkpoint
//! lands what was read); a second one cancels the stop.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use sluice_connectors::ingest::IngestJob;
use sluice_engine::metrics::JobMetrics;
use sluice_engine::EngineError;
use sluice_sql::options::{CHECKPOINT_DIR, CHECKPOINT_INTERVAL};
use sluice_sql::{Catalog, Session, StatementOutput};

use crate::interrupt::Interrupts;
use crate::render::status;

/// The checkpoint interval without `--checkpoint-interval` or a `SET` in the file.
pub const DEFAULT_INTERVAL: &str = "10 s";

/// Arguments of `sluice ingest`.
pub struct IngestArgs {
    pub sql: PathBuf,
    pub from: String,
    pub to: String,
    /// `execution.checkpointing.interval`, e.g. `10 s`; `None`: the file's, else [`DEFAULT_INTERVAL`].
    pub checkpoint_interval: Option<String>,
    /// `state.checkpoints.dir`; `None`: the file's, else `.sluice/checkpoints`.
    pub checkpoint_dir: Option<String>,
    /// Rows per lake file at most (the lake table's `rollover.rows`).
    pub round_rows: Option<usize>,
    /// Milliseconds between checkpoints (what `--checkpoint-interval` says, in the old words).
    pub round_ms: Option<u64>,
}

/// One line of progress: rows read and written, checkpoints, bad records.
fn describe(metrics: &JobMetrics) -> String {
    let m = metrics.snapshot();
    let checkpoints = metrics.checkpoints();
    let last = checkpoints.last().map(|c| format!(" (last: {}, {} ms)", c.id, c.duration_ms)).unwrap_or_default();
    format!(
        "{} rows read, {} written, {} checkpoint(s){last}, {} bad",
        m.rows_in, m.rows_out, checkpoints.completed, m.bad_records
    )
}

pub async fn run(args: IngestArgs, interrupts: &mut Interrupts) -> anyhow::Result<()> {
    let ddl = std::fs::read_to_string(&args.sql).with_context(|| format!("reading {}", args.sql.display()))?;
    let catalog = Arc::new(RwLock::new(Catalog::default()));
    let mut session = Session::new(Arc::clone(&catalog));
    session.execute_script(&ddl).await?;
    let source = session.table_spec(&args.from)?;
    let sink = session.table_spec(&args.to)?;
    let job = IngestJob::plan(&source, &sink)?;
    {
        let mut catalog = catalog.write().map_err(|_| anyhow!("catalog lock poisoned"))?;
        let mut table = catalog.table(&source.name).cloned().ok_or_else(|| anyhow!("table '{}' does not exist", source.name))?;
        table.options = job.source_options.clone();
        if let Some(rows) = args.round_rows {
            let mut lake = catalog.table(&sink.name).cloned().ok_or_else(|| anyhow!("table '{}' does not exist", sink.name))?;
            lake.options.insert("rollover.rows".to_string(), rows.to_string());
            catalog.drop_table(&sink.name)?;
            catalog.add_table(lake)?;
        }
        catalog.drop_table(&source.name)?;
        catalog.add_table(table)?;
    }
    let mut options = session.options().clone();
    let interval = match (&args.checkpoint_interval, args.round_ms) {
        (Some(every), _) => Some(every.clone()),
        (None, Some(ms)) => Some(format!("{ms} ms")),
        (None, None) => options.checkpoint_interval.is_none().then(|| DEFAULT_INTERVAL.to_string()),
    };
    if let Some(every) = interval {
        options.set(CHECKPOINT_INTERVAL, &every).map_err(|e| anyhow!("--checkpoint-interval: {e}"))?;
    }
    if let Some(dir) = &args.checkpoint_dir {
        options.set(CHECKPOINT_DIR, dir)?;
    }
    if options.checkpoint_interval.is_none() {
        bail!("sluice ingest lands records exactly once through checkpoints: '{CHECKPOINT_INTERVAL}' cannot be 0");
    }
    options.pipeline_name.get_or_insert_with(|| job.pipeline_name.clone());
    session.set_options(options);

    let mut outputs = session.execute_script(&job.statement).await?;
    let Some(StatementOutput::Insert { mut job, warnings, .. }) = outputs.pop() else {
        bail!("internal: the ingest statement is not an INSERT");
    };
    for w in &warnings {
        status(w);
    }
    let metrics = job.metrics_handle();
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new_spinner();
        bar.set_style(ProgressStyle::with_template("{spinner} {elapsed} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()));
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    });
    interrupts.clear();
    let ended = {
        let wait = job.wait();
        tokio::pin!(wait);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                biased;
                _ = interrupts.next() => break None,
                r = &mut wait => break Some(r),
                _ = tick.tick() => {
                    if let Some(bar) = &bar {
                        bar.set_message(describe(&metrics));
                    }
                }
            }
        }
    };
    let (result, how) = match ended {
        Some(r) => (r, "finished"),
        None => {
            if let Some(bar) = &bar {
                bar.set_message(format!("stopping (Ctrl-C again to cancel): {}", describe(&metrics)));
            }
            tokio::select! {
                biased;
                _ = interrupts.next() => {
                    job.cancel();
                    (Ok(()), "cancelled (what was read since the last checkpoint is read again next time)")
                }
                r = job.stop() => (r, "stopped"),
            }
        }
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    match result {
        Ok(()) | Err(EngineError::Cancelled) => {}
        Err(e) => return Err(e.into()),
    }
    println!("ingest {how}: {}", describe(&metrics));
    Ok(())
}
