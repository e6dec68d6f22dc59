//! Runs the golden SQL files under `tests/slt/` against a fresh Sluice session each.
//!
//! `cargo test --test slt` checks them; `cargo test --test slt -- --complete`
//! rewrites their expected results. A continuous query's result is everything it
//! emitted until its bounded input ended; an INSERT completes when its job does.

mod common;

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use sluice_connectors::table_printer::format_cells;
use sluice_sql::{Session, StatementOutput};
use sqllogictest::{default_column_validator, default_normalizer, default_validator, DBOutput, DefaultColumnType};

/// A query in a golden file must finish (bounded input) within this time.
const QUERY_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct SltError(String);

struct SluiceDb {
    session: Session,
}

/// Rows as text; empty strings are written `(empty)`, as sqllogictest expects.
fn rows_of(batches: &[datafusion::arrow::record_batch::RecordBatch]) -> Result<Vec<Vec<String>>, SltError> {
    let mut rows = Vec::new();
    for b in batches {
        for row in format_cells(b).map_err(|e| SltError(e.to_string()))? {
            rows.push(row.into_iter().map(|c| if c.is_empty() { "(empty)".to_string() } else { c }).collect());
        }
    }
    Ok(rows)
}

#[async_trait]
impl sqllogictest::AsyncDB for SluiceDb {
    type Error = SltError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SltError> {
        let err = |e: &dyn std::fmt::Display| SltError(e.to_string());
        let mut statements = self.session.parse(sql).map_err(|e| err(&e))?;
        let Some(statement) = statements.pop().filter(|_| statements.is_empty()) else {
            return Err(SltError("one statement per record".into()));
        };
        match self.session.execute(statement).await.map_err(|e| err(&e))? {
            StatementOutput::Message(_) => Ok(DBOutput::StatementComplete(0)),
            StatementOutput::Rows { schema, batches } => Ok(DBOutput::Rows {
                types: vec![DefaultColumnType::Any; schema.fields().len()],
                rows: rows_of(&batches)?,
            }),
            StatementOutput::Query(mut q) => {
                let collect = async {
                    let mut batches = Vec::new();
                    while let Some(b) = q.results.recv().await {
                        batches.push(b);
                    }
                    q.job.wait().await.map(|_| batches)
                };
                let batches = tokio::time::timeout(QUERY_TIMEOUT, collect)
                    .await
                    .map_err(|_| SltError("query did not finish: is its input unbounded?".into()))?
                    .map_err(|e| err(&e))?;
                Ok(DBOutput::Rows { types: vec![DefaultColumnType::Any; q.schema.fields().len()], rows: rows_of(&batches)? })
            }
            StatementOutput::Insert { mut job, .. } => {
                tokio::time::timeout(QUERY_TIMEOUT, job.wait())
                    .await
                    .map_err(|_| SltError("INSERT did not finish: is its input unbounded?".into()))?
                    .map_err(|e| err(&e))?;
                Ok(DBOutput::StatementComplete(job.metrics().rows_out))
            }
            StatementOutput::InsertSet { mut job, .. } => {
                tokio::time::timeout(QUERY_TIMEOUT, job.wait())
                    .await
                    .map_err(|_| SltError("the statement set did not finish: is its input unbounded?".into()))?
                    .map_err(|e| err(&e))?;
                Ok(DBOutput::StatementComplete(job.metrics().rows_out))
            }
        }
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "sluice"
    }
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let complete = args.iter().any(|a| a == "--complete");
    let filter = args.iter().skip(1).find(|a| !a.starts_with('-')).cloned();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    if let Err(e) = common::slt_files(&root.join("tests/slt"), &mut files) {
        eprintln!("cannot list tests/slt: {e}");
        return std::process::ExitCode::FAILURE;
    }
    files.sort();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let (mut passed, mut failed) = (0, 0);
    for file in files {
        let name = file.strip_prefix(root).unwrap_or(&file).display().to_string();
        if filter.as_ref().is_some_and(|f| !name.contains(f.as_str())) {
            continue;
        }
        let result = runtime.block_on(async {
            let mut runner = sqllogictest::Runner::new(|| async { Ok(SluiceDb { session: Session::default() }) });
            runner.with_column_validator(default_column_validator);
            if complete {
                runner
                    .update_test_file(&file, " ", default_validator, default_normalizer, default_column_validator)
                    .await
                    .map_err(|e| e.to_string())
            } else {
                runner.run_file_async(&file).await.map_err(|e| e.display(true).to_string())
            }
        });
        match result {
            Ok(()) => {
                println!("ok     {name}");
                passed += 1;
            }
            Err(e) => {
                println!("FAILED {name}\n{e}");
                failed += 1;
            }
        }
    }
    println!("slt: {passed} passed, {failed} failed");
    if failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
