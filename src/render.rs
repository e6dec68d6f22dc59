//! Prints what statements produce, as they produce it.

use std::io::Write;
use std::time::Instant;

use sluice_connectors::table_printer::TablePrinter;
use sluice_sql::{QueryOutput, Session, SluiceStatement, StatementOutput};

/// Runs every statement of `sql`, printing results; stops at the first error,
/// which is printed to stderr. Returns whether all statements succeeded.
pub async fn run_script(session: &mut Session, sql: &str, timing: bool, out: &mut impl Write) -> bool {
    let statements = match session.parse(sql) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return false;
        }
    };
    for statement in statements {
        if !run_statement(session, statement, timing, out).await {
            return false;
        }
    }
    true
}

/// Runs one statement and prints its outcome; Ctrl-C cancels a running query.
pub async fn run_statement(session: &mut Session, statement: SluiceStatement, timing: bool, out: &mut impl Write) -> bool {
    let started = Instant::now();
    let result = match session.execute(statement).await {
        Ok(output) => print_output(output, out).await,
        Err(e) => Err(e.to_string()),
    };
    report_outcome(result, started, timing, out)
}

/// Prints a statement's summary line (or its error, on stderr) and, with
/// `timing`, how long it took; true if it succeeded. Local and remote
/// sessions report alike.
pub fn report_outcome(result: Result<Option<String>, String>, started: Instant, timing: bool, out: &mut impl Write) -> bool {
    let ok = match result {
        Ok(summary) => {
            if let Some(s) = summary {
                let _ = writeln!(out, "{s}");
            }
            true
        }
        Err(e) => {
            let _ = out.flush();
            eprintln!("error: {e}");
            false
        }
    };
    if timing {
        let _ = writeln!(out, "Time: {:.3}s", started.elapsed().as_secs_f64());
    }
    let _ = out.flush();
    ok
}

async fn print_output(output: StatementOutput, out: &mut impl Write) -> Result<Option<String>, String> {
    match output {
        StatementOutput::Message(m) => Ok(Some(m)),
        StatementOutput::Rows { schema, batches } => {
            let mut printer = TablePrinter::new(schema);
            for b in &batches {
                write_text(out, &printer.format_batch(b).map_err(|e| e.to_string())?);
            }
            write_text(out, &printer.finish());
            Ok(Some(format!("{} row(s)", printer.rows())))
        }
        StatementOutput::Query(query) => stream_query(query, out).await.map(Some),
        StatementOutput::Insert { target, mut job } => {
            let _ = writeln!(out, "Inserting into '{target}' (Ctrl-C to stop)");
            let _ = out.flush();
            let status = tokio::select! {
                r = job.wait() => r,
                _ = tokio::signal::ctrl_c() => { job.cancel(); Err(sluice_engine::EngineError::Cancelled) }
            };
            let m = job.metrics();
            match status {
                Ok(()) | Err(sluice_engine::EngineError::Cancelled) => Ok(Some(format!(
                    "{} row(s) written to '{target}'{}",
                    m.rows_out,
                    late_note(m.late_rows)
                ))),
                Err(e) => Err(e.to_string()),
            }
        }
    }
}

/// Prints a continuous query's rows as they arrive, until it ends or Ctrl-C.
async fn stream_query(mut query: QueryOutput, out: &mut impl Write) -> Result<String, String> {
    let mut printer = TablePrinter::new(query.schema.clone());
    let mut cancelled = false;
    loop {
        tokio::select! {
            batch = query.results.recv() => match batch {
                Some(b) => write_text(out, &printer.format_batch(&b).map_err(|e| e.to_string())?),
                None => break,
            },
            _ = tokio::signal::ctrl_c() => {
                query.job.cancel();
                cancelled = true;
                break;
            }
        }
    }
    write_text(out, &printer.finish());
    let status = if cancelled { Ok(()) } else { query.job.wait().await };
    status.map_err(|e| e.to_string())?;
    let m = query.job.metrics();
    let how = if cancelled { " (cancelled)" } else { "" };
    Ok(format!("{} row(s){how}{}", printer.rows(), late_note(m.late_rows)))
}

fn late_note(late: u64) -> String {
    if late > 0 {
        format!("; {late} late row(s) dropped")
    } else {
        String::new()
    }
}

fn write_text(out: &mut impl Write, text: &str) {
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}
