//! Prints what statements produce, as they produce it.
//!
//! Result rows go to stdout; everything said about them (status lines, warnings,
//! summaries, timing, errors) goes to stderr, so `sluice run ... > rows.json`
//! holds rows only. A running query ends in one of four ways: it runs out of
//! input; a Ctrl-C (or SIGTERM) stops it gracefully, and its summary is printed
//! only once the sinks have made what they received durable (a second Ctrl-C
//! during a slow stop cancels it at once); the reader of stdout goes away
//! (`| head`), which ends it quietly; or it fails. Rows are written in the
//! chosen [`OutputFormat`] (a table, CSV, a JSON array or JSON lines).

use std::fmt::Display;
use std::io::Write;
use std::time::Instant;

use sluice_connectors::output_format::{OutputFormat, ResultWriter};
use sluice_engine::{EngineError, JobHandle};
use sluice_sql::{QueryOutput, Session, SluiceStatement, StatementOutput};

use crate::interrupt::Interrupts;

/// How results are printed: `--format` and `\pset format`, `--timing` and `\timing`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrintOptions {
    pub format: OutputFormat,
    /// Print how long each statement took (on stderr).
    pub timing: bool,
}

/// How a statement, or a script, ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// It ran to its end.
    Completed,
    /// Ctrl-C or SIGTERM stopped it; the rest of a script is not run.
    Interrupted,
    /// Stdout was closed (`| head`): nobody reads the rows any more.
    ReaderGone,
    /// It failed; the error has been printed.
    Failed,
}

/// A statement that ran: its summary line and whether it ran to its end.
pub struct Report {
    pub summary: Option<String>,
    /// [`Ending::Completed`] or [`Ending::Interrupted`].
    pub ending: Ending,
}

impl Report {
    pub fn completed(summary: impl Into<String>) -> Self {
        Report { summary: Some(summary.into()), ending: Ending::Completed }
    }
}

/// Why a statement's output stopped before its end.
pub enum Halt {
    /// Stdout was closed.
    ReaderGone,
    /// The statement failed (or its output could not be written).
    Error(String),
}

impl From<String> for Halt {
    fn from(e: String) -> Self {
        Halt::Error(e)
    }
}

impl From<&str> for Halt {
    fn from(e: &str) -> Self {
        Halt::Error(e.to_string())
    }
}

impl From<EngineError> for Halt {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Io(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Halt::ReaderGone,
            e => Halt::Error(e.to_string()),
        }
    }
}

/// Runs every statement of `sql`, printing results; stops at the first error
/// (printed to stderr), interrupt or closed stdout, and says which. A signal
/// that comes between two statements (a SIGTERM while tables are created) stops
/// the script too; one that came before it started does not.
pub async fn run_script(
    session: &mut Session,
    sql: &str,
    print: PrintOptions,
    out: &mut impl Write,
    interrupts: &mut Interrupts,
) -> Ending {
    let statements = match session.parse(sql) {
        Ok(s) => s,
        Err(e) => {
            status(format_args!("error: {e}"));
            return Ending::Failed;
        }
    };
    interrupts.clear();
    for statement in statements {
        if interrupts.pending() {
            return interrupted();
        }
        let ending = run_statement(session, statement, print, out, interrupts).await;
        if ending != Ending::Completed {
            return ending;
        }
    }
    Ending::Completed
}

/// Runs one statement and prints its outcome; Ctrl-C stops a running query.
pub async fn run_statement(
    session: &mut Session,
    statement: SluiceStatement,
    print: PrintOptions,
    out: &mut impl Write,
    interrupts: &mut Interrupts,
) -> Ending {
    let started = Instant::now();
    let result = match session.execute(statement).await {
        Ok(output) => print_output(output, print.format, out, interrupts).await,
        Err(e) => Err(Halt::Error(e.to_string())),
    };
    report_outcome(result, started, print.timing, out)
}

/// Prints a statement's summary line (or its error) on stderr and, with
/// `timing`, how long it took. Local and remote sessions report alike; a
/// statement whose reader went away ends without a word.
pub fn report_outcome(result: Result<Report, Halt>, started: Instant, timing: bool, out: &mut impl Write) -> Ending {
    let _ = out.flush();
    let ending = match result {
        Ok(report) => {
            if let Some(s) = report.summary {
                status(s);
            }
            report.ending
        }
        Err(Halt::ReaderGone) => return Ending::ReaderGone,
        Err(Halt::Error(e)) => {
            status(format_args!("error: {e}"));
            Ending::Failed
        }
    };
    if timing {
        status(format_args!("Time: {:.3}s", started.elapsed().as_secs_f64()));
    }
    ending
}

/// Says that a script stops before its next statement because of a signal.
pub fn interrupted() -> Ending {
    status("Interrupted: the rest of the script is not run.");
    Ending::Interrupted
}

/// Writes a line to stderr; a closed stderr is no reason to fail a query.
pub fn status(line: impl Display) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Writes result text to stdout (or wherever `out` goes) and flushes it.
pub fn write_text(out: &mut impl Write, text: &str) -> Result<(), Halt> {
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).map_err(|e| match e.kind() {
        std::io::ErrorKind::BrokenPipe => Halt::ReaderGone,
        _ => Halt::Error(format!("writing the results: {e}")),
    })
}

fn warn(warnings: &[String]) {
    for w in warnings {
        status(format_args!("warning: {w}"));
    }
}

async fn print_output(output: StatementOutput, format: OutputFormat, out: &mut impl Write, interrupts: &mut Interrupts) -> Result<Report, Halt> {
    match output {
        StatementOutput::Message(m) => Ok(Report::completed(m)),
        StatementOutput::Rows { schema, batches } => {
            let mut printer = ResultWriter::new(schema, format);
            for b in &batches {
                write_text(out, &printer.format_batch(b).map_err(|e| e.to_string())?)?;
            }
            write_text(out, &printer.finish())?;
            Ok(Report::completed(format!("{} row(s)", printer.rows())))
        }
        StatementOutput::Query(query) => stream_query(query, format, out, interrupts).await,
        StatementOutput::InsertSet { targets, job, warnings } => run_insert(targets, job, warnings, interrupts).await,
        StatementOutput::Insert { target, job, warnings } => run_insert(vec![target], job, warnings, interrupts).await,
    }
}

/// Waits for an INSERT, or a statement set's INSERTs (one job), to end.
/// Ctrl-C stops it gracefully; a second one cancels it.
async fn run_insert(targets: Vec<String>, mut job: JobHandle, warnings: Vec<String>, interrupts: &mut Interrupts) -> Result<Report, Halt> {
    warn(&warnings);
    let quoted: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    status(format_args!("Inserting into {} (Ctrl-C to stop)", quoted.join(", ")));
    let finished = tokio::select! {
        biased;
        _ = interrupts.next() => None,
        r = job.wait() => Some(r),
    };
    let (result, how) = match finished {
        Some(r) => (r, ""),
        None => match stop_or_cancel(&mut job, interrupts).await {
            Some(r) => (r, " (stopped)"),
            None => (Ok(()), " (cancelled: the sinks may not have made them all durable)"),
        },
    };
    match result {
        Ok(()) | Err(EngineError::Cancelled) => {}
        Err(e) => return Err(e.into()),
    }
    let m = job.metrics();
    let ending = if how.is_empty() { Ending::Completed } else { Ending::Interrupted };
    let summary = match targets.as_slice() {
        [target] => format!("{} row(s) written to '{target}'{how}{}", m.rows_out, late_note(m.late_rows)),
        _ => {
            let rows = job.metrics_handle().rows_per_sink();
            let written: Vec<String> =
                targets.iter().enumerate().map(|(i, t)| format!("{} row(s) to '{t}'", rows.get(i).copied().unwrap_or(0))).collect();
            format!("written: {}{how}{}", written.join(", "), late_note(m.late_rows))
        }
    };
    Ok(Report { summary: Some(summary), ending })
}

/// Stops `job` gracefully; a second interrupt during a slow stop cancels it
/// at once (then `None`).
async fn stop_or_cancel(job: &mut JobHandle, interrupts: &mut Interrupts) -> Option<sluice_engine::Result<()>> {
    let stopped = tokio::select! {
        biased;
        _ = interrupts.next() => None,
        r = job.stop() => Some(r),
    };
    if stopped.is_none() {
        job.cancel();
    }
    stopped
}

/// Prints a continuous query's rows as they arrive, until it ends, is
/// interrupted, or stdout closes. The output is ended (a table's last line, a
/// JSON array's `]`) when the query ends or is stopped, not when it fails.
async fn stream_query(query: QueryOutput, format: OutputFormat, out: &mut impl Write, interrupts: &mut Interrupts) -> Result<Report, Halt> {
    let QueryOutput { schema, mut results, mut job, warnings } = query;
    warn(&warnings);
    let mut printer = ResultWriter::new(schema, format);
    // Interrupts come first: a query that never waits for rows is still stoppable.
    let interrupted = loop {
        tokio::select! {
            biased;
            _ = interrupts.next() => break true,
            batch = results.recv() => match batch {
                Some(b) => {
                    if let Err(halt) = print_batch(out, &mut printer, &b) {
                        job.cancel();
                        return Err(halt);
                    }
                }
                None => break false,
            },
        }
    };
    let how = if interrupted {
        // Rows still in flight drain to the results channel while the query
        // stops: keep printing them, or the stop would wait on a full channel.
        let stopped = {
            let stop = job.stop();
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    biased;
                    _ = interrupts.next() => break Ok(None),
                    r = &mut stop => break Ok(Some(r)),
                    Some(b) = results.recv() => {
                        if let Err(halt) = print_batch(out, &mut printer, &b) {
                            break Err(halt);
                        }
                    }
                }
            }
        };
        match stopped {
            Ok(Some(r)) => {
                match r {
                    Ok(()) | Err(EngineError::Cancelled) => {}
                    Err(e) => return Err(e.into()),
                }
                while let Ok(b) = results.try_recv() {
                    print_batch(out, &mut printer, &b)?;
                }
                " (stopped)"
            }
            Ok(None) => {
                job.cancel();
                " (cancelled)"
            }
            Err(halt) => {
                job.cancel();
                return Err(halt);
            }
        }
    } else {
        job.wait().await?;
        ""
    };
    write_text(out, &printer.finish())?;
    let m = job.metrics();
    let ending = if interrupted { Ending::Interrupted } else { Ending::Completed };
    Ok(Report { summary: Some(format!("{} row(s){how}{}", printer.rows(), late_note(m.late_rows))), ending })
}

fn print_batch(out: &mut impl Write, printer: &mut ResultWriter, batch: &arrow::record_batch::RecordBatch) -> Result<(), Halt> {
    write_text(out, &printer.format_batch(batch).map_err(|e| e.to_string())?)
}

fn late_note(late: u64) -> String {
    if late > 0 {
        format!("; {late} late row(s) dropped")
    } else {
        String::new()
    }
}
