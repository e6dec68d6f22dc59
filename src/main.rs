//! The `sluice` command: the interactive shell and script runner.

mod render;
mod shell;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use sluice_sql::Session;

#[derive(Parser)]
#[command(name = "sluice", version, about = "Continuous SQL over event streams")]
struct Cli {
    /// Load a native plug-in function: NAME=PATH to a shared library built against
    /// datafusion-ffi (repeatable); same as CREATE FUNCTION NAME LANGUAGE rust AS 'PATH'.
    #[arg(long = "udf", global = true, value_name = "NAME=PATH")]
    udfs: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Interactive SQL shell.
    Shell,
    /// Run a SQL script (or -c "SQL") to completion; Ctrl-C stops the running query.
    Run {
        /// The script to run.
        file: Option<PathBuf>,
        /// SQL to run instead of a file.
        #[arg(short = 'c', long = "command")]
        command: Option<String>,
        /// Print how long each statement took.
        #[arg(long)]
        timing: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut session = Session::default();
    for udf in &cli.udfs {
        let Some((name, path)) = udf.split_once('=') else { bail!("--udf expects NAME=PATH, got '{udf}'") };
        let sql = format!("CREATE FUNCTION {name} LANGUAGE rust AS '{}'", path.replace('\'', "''"));
        if !runtime.block_on(render::run_script(&mut session, &sql, false, &mut std::io::sink())) {
            bail!("--udf {udf}: the function could not be loaded");
        }
    }
    match cli.command {
        Command::Shell => shell::run(&runtime, session),
        Command::Run { file, command, timing } => {
            let sql = match (file, command) {
                (Some(path), None) => std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?,
                (None, Some(sql)) => sql,
                _ => bail!("give either a script file or -c \"SQL\""),
            };
            let ok = runtime.block_on(render::run_script(&mut session, &sql, timing, &mut std::io::stdout()));
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}
