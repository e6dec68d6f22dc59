//! `sluice shell`: an interactive SQL prompt in the style of psql and datafusion-cli.
//!
//! Statements may span lines and end with `;` (one outside strings and comments,
//! see [`statement_end`]). Backslash commands are listed by `\?` (see
//! [`commands`]). Ctrl-C stops the running query gracefully, not the shell (a
//! second one cancels it); Ctrl-D quits. History is kept in `~/.sluice_history`,
//! saved after each entry, so a shell that is killed loses none. With `--server
//! URL` the statements run on a `sluice serve` instead (see [`remote`]).

mod commands;
pub mod remote;
mod statement_end;

use std::path::PathBuf;

use anyhow::Context;
use rustyline::error::ReadlineError;
use rustyline::DefaultEditor;
use sluice_sql::Session;

use crate::interrupt::Interrupts;
use crate::render::{self, Ending, PrintOptions};
use commands::BackslashCommand;

const PROMPT: &str = "sluice> ";
const CONTINUATION: &str = "     -> ";

fn history_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".sluice_history"))
}

/// Where statements run: in this process, or on a server.
pub enum Backend {
    Local(Box<Session>),
    Remote(remote::Remote),
}

impl Backend {
    fn run(&mut self, runtime: &tokio::runtime::Runtime, sql: &str, print: PrintOptions, interrupts: &mut Interrupts) -> Ending {
        let mut out = std::io::stdout();
        match self {
            Backend::Local(session) => runtime.block_on(render::run_script(session, sql, print, &mut out, interrupts)),
            Backend::Remote(remote) => runtime.block_on(remote.run_script(sql, print, &mut out, interrupts)),
        }
    }
}

/// Runs the shell until `\q`, end of input, or a closed stdout, printing
/// results as `print` says until `\timing` or `\pset format` change it.
pub fn run(
    runtime: &tokio::runtime::Runtime,
    mut backend: Backend,
    mut print: PrintOptions,
    mut interrupts: Interrupts,
) -> anyhow::Result<std::process::ExitCode> {
    let mut editor = DefaultEditor::new().context("starting the line editor")?;
    let history = history_path();
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    render::status(format_args!(
        "Sluice {} — continuous SQL over event streams. \\? for help, \\q to quit.",
        env!("CARGO_PKG_VERSION")
    ));
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() { PROMPT } else { CONTINUATION };
        let line = match editor.readline(prompt) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => {
                buffer.clear();
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e).context("reading input"),
        };
        if buffer.is_empty() && line.trim_start().starts_with('\\') {
            remember(&mut editor, history.as_deref(), &line);
            match commands::parse(line.trim()) {
                Ok(BackslashCommand::Quit) => break,
                Ok(BackslashCommand::Help) => {
                    if render::write_text(&mut std::io::stdout(), &format!("{}\n", commands::help())).is_err() {
                        break;
                    }
                }
                Ok(BackslashCommand::Timing) => {
                    print.timing = !print.timing;
                    render::status(format_args!("Timing is {}.", if print.timing { "on" } else { "off" }));
                }
                Ok(BackslashCommand::Format(format)) => {
                    print.format = format.unwrap_or(print.format);
                    render::status(format_args!("Output format is {}.", print.format));
                }
                Ok(BackslashCommand::Sql(sql)) => {
                    if backend.run(runtime, &sql, print, &mut interrupts) == Ending::ReaderGone {
                        break;
                    }
                }
                Err(e) => render::status(e),
            }
            continue;
        }
        if !buffer.is_empty() {
            buffer.push('\n');
        }
        buffer.push_str(&line);
        if !statement_end::ends_statement(&buffer) {
            continue;
        }
        let sql = std::mem::take(&mut buffer);
        remember(&mut editor, history.as_deref(), &sql);
        if backend.run(runtime, &sql, print, &mut interrupts) == Ending::ReaderGone {
            break;
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Adds an entry to the history and appends it to the history file at once.
fn remember(editor: &mut DefaultEditor, history: Option<&std::path::Path>, entry: &str) {
    let _ = editor.add_history_entry(entry);
    if let Some(h) = history {
        if let Err(e) = editor.append_history(h) {
            tracing::debug!("saving the shell history to {}: {e}", h.display());
        }
    }
}
