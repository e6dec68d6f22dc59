//! `sluice shell`: an interactive SQL prompt in the style of psql and datafusion-cli.
//!
//! Statements may span lines and end with `;`. Backslash commands: `\q` quit,
//! `\?` help, `\d` list tables, `\d NAME` describe a table, `\df` list functions,
//! `\timing` toggle timing. Ctrl-C cancels the running query, not the shell;
//! Ctrl-D quits. History is kept in `~/.sluice_history`. With `--server URL` the
//! statements run on a `sluice serve` instead (see [`remote`]).

mod commands;
pub mod remote;

use std::path::PathBuf;

use anyhow::Context;
use rustyline::error::ReadlineError;
use rustyline::DefaultEditor;
use sluice_sql::Session;

use crate::render;
use commands::{BackslashCommand, HELP};

const PROMPT: &str = "sluice> ";
const CONTINUATION: &str = "     -> ";

fn history_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".sluice_history"))
}

/// Where statements run: in this process, or on a server.
pub enum Backend {
    Local(Session),
    Remote(remote::Remote),
}

impl Backend {
    fn run(&mut self, runtime: &tokio::runtime::Runtime, sql: &str, timing: bool) -> bool {
        let mut out = std::io::stdout();
        match self {
            Backend::Local(session) => runtime.block_on(render::run_script(session, sql, timing, &mut out)),
            Backend::Remote(remote) => runtime.block_on(remote.run_script(sql, timing, &mut out)),
        }
    }
}

/// Runs the shell until `\q` or end of input.
pub fn run(runtime: &tokio::runtime::Runtime, mut backend: Backend) -> anyhow::Result<std::process::ExitCode> {
    let mut editor = DefaultEditor::new().context("starting the line editor")?;
    let history = history_path();
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    println!("Sluice {} — continuous SQL over event streams. \\? for help, \\q to quit.", env!("CARGO_PKG_VERSION"));
    let mut timing = false;
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
            let _ = editor.add_history_entry(line.as_str());
            match commands::parse(line.trim()) {
                Ok(BackslashCommand::Quit) => break,
                Ok(BackslashCommand::Help) => println!("{HELP}"),
                Ok(BackslashCommand::Timing) => {
                    timing = !timing;
                    println!("Timing is {}.", if timing { "on" } else { "off" });
                }
                Ok(BackslashCommand::Sql(sql)) => {
                    backend.run(runtime, &sql, timing);
                }
                Err(e) => eprintln!("{e}"),
            }
            continue;
        }
        if !buffer.is_empty() {
            buffer.push('\n');
        }
        buffer.push_str(&line);
        if !buffer.trim_end().ends_with(';') {
            continue;
        }
        let sql = std::mem::take(&mut buffer);
        let _ = editor.add_history_entry(sql.as_str());
        backend.run(runtime, &sql, timing);
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    Ok(std::process::ExitCode::SUCCESS)
}
