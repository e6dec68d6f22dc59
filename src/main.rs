//! The `sluice` command: the interactive shell and script runner.

mod ingest;
mod interrupt;
mod render;
mod server;
mod shell;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use sluice_connectors::output_format::OutputFormat;
use sluice_sql::Session;

use crate::interrupt::Interrupts;

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
    Shell {
        /// Run statements on a `sluice serve` at this URL instead of in-process.
        #[arg(long)]
        server: Option<String>,
        /// Bearer token for --server (default: the SLUICE_TOKEN environment variable).
        #[arg(long)]
        token: Option<String>,
        /// How results print: table, csv, json (one JSON array, closed when the query ends or
        /// stops) or ndjson (one JSON object per line); `\pset format` changes it.
        #[arg(long, default_value_t = OutputFormat::Table, value_name = "FORMAT")]
        format: OutputFormat,
    },
    /// REST server running continuous queries (see README: REST API).
    Serve {
        /// Address to listen on (port 0 picks a free port; the chosen address is printed).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Where the catalog and submitted queries are kept across restarts.
        #[arg(long, default_value = ".sluice")]
        state_dir: PathBuf,
        /// ROLE:TOKEN (roles: viewer, editor, admin); repeatable. Also read from SLUICE_TOKENS.
        #[arg(long = "token", value_name = "ROLE:TOKEN")]
        tokens: Vec<String>,
    },
    /// Land a Kafka topic in a Parquet lake, exactly once: a checkpointed
    /// `INSERT INTO <lake> SELECT * FROM <kafka>` named `ingest-<lake>`, resumed
    /// from its newest checkpoint when started again; Ctrl-C stops cleanly.
    Ingest {
        /// SQL file declaring the kafka table (--from) and the lake table (--to); it may SET settings too.
        #[arg(long)]
        sql: PathBuf,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        /// How often a checkpoint lands what was read (e.g. '10 s', '500 ms'); default: the file's
        /// 'execution.checkpointing.interval', else 10 s.
        #[arg(long, value_name = "DURATION")]
        checkpoint_interval: Option<String>,
        /// Where checkpoints are kept (a path or s3:// URL); default: the file's 'state.checkpoints.dir',
        /// else .sluice/checkpoints.
        #[arg(long, value_name = "DIR")]
        checkpoint_dir: Option<String>,
        /// Rows per lake file at most (overrides the lake table's 'rollover.rows').
        #[arg(long)]
        round_rows: Option<usize>,
        /// The checkpoint interval in milliseconds (the older name of --checkpoint-interval).
        #[arg(long, conflicts_with = "checkpoint_interval")]
        round_ms: Option<u64>,
    },
    /// Run a SQL script (or -c "SQL") to completion; Ctrl-C or SIGTERM stops the
    /// running query gracefully (and the script), a second Ctrl-C cancels it.
    Run {
        /// The script to run.
        file: Option<PathBuf>,
        /// SQL to run instead of a file (it may start with a `--` comment).
        #[arg(short = 'c', long = "command", allow_hyphen_values = true)]
        command: Option<String>,
        /// Print how long each statement took.
        #[arg(long)]
        timing: bool,
        /// How results print on stdout: table, csv, json (one JSON array, closed when the query
        /// ends or stops) or ndjson (one JSON object per line). An updating query's `op` is a
        /// column like the others.
        #[arg(long, default_value_t = OutputFormat::Table, value_name = "FORMAT")]
        format: OutputFormat,
    },
}

/// Stack of Sluice's threads (the runtime's and the one running the command).
const THREAD_STACK_BYTES: usize = 64 << 20;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(colour_on_stderr())
        .init();
    let cli = Cli::parse();
    // Planning and evaluating an expression recurse once per nesting level
    // (bounded by sluice_sql::statement::MAX_EXPR_DEPTH): run on a stack that fits it.
    let outcome = std::thread::Builder::new()
        .stack_size(THREAD_STACK_BYTES)
        .spawn(move || run(cli))
        .map_err(anyhow::Error::from)
        .and_then(|t| t.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the main thread panicked"))));
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Colour in log lines only for a person at a terminal, and never with NO_COLOR set
/// (<https://no-color.org>): escape codes in a log file or a pipe are noise.
fn colour_on_stderr() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(THREAD_STACK_BYTES)
        .build()
        .context("starting the async runtime")?;
    if let Command::Serve { listen, state_dir, tokens } = cli.command {
        let from_env = std::env::var("SLUICE_TOKENS").unwrap_or_default();
        let tokens = server::auth::Tokens::parse(tokens.iter().map(String::as_str).chain(from_env.split(',')))
            .map_err(anyhow::Error::msg)?;
        let config = server::ServerConfig { listen, state_dir, tokens, udfs: cli.udfs };
        runtime.block_on(server::serve(config))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut session = Session::default();
    // One listener for the life of the process (see `interrupt`); SIGTERM stops a
    // script or an ingest job gracefully, while a shell leaves it to end the process.
    let mut interrupts =
        Interrupts::listen(matches!(cli.command, Command::Run { .. } | Command::Ingest { .. })).context("listening for Ctrl-C")?;
    if let Command::Ingest { sql, from, to, checkpoint_interval, checkpoint_dir, round_rows, round_ms } = cli.command {
        let args = ingest::IngestArgs { sql, from, to, checkpoint_interval, checkpoint_dir, round_rows, round_ms };
        runtime.block_on(ingest::run(args, &mut interrupts))?;
        return Ok(ExitCode::SUCCESS);
    }
    for udf in &cli.udfs {
        let Some((name, path)) = udf.split_once('=') else { bail!("--udf expects NAME=PATH, got '{udf}'") };
        let sql = format!("CREATE FUNCTION {name} LANGUAGE rust AS '{}'", path.replace('\'', "''"));
        // Loaded quietly: only a failure is worth a line.
        if let Err(e) = runtime.block_on(session.execute_script(&sql)) {
            bail!("--udf {udf}: {e}");
        }
    }
    match cli.command {
        Command::Shell { server: None, format, .. } => {
            let print = render::PrintOptions { format, timing: false };
            shell::run(&runtime, shell::Backend::Local(Box::new(session)), print, interrupts)
        }
        Command::Shell { server: Some(url), token, format } => {
            let token = token.or_else(|| std::env::var("SLUICE_TOKEN").ok());
            let print = render::PrintOptions { format, timing: false };
            shell::run(&runtime, shell::Backend::Remote(shell::remote::Remote::new(&url, token)), print, interrupts)
        }
        Command::Serve { .. } | Command::Ingest { .. } => Ok(ExitCode::SUCCESS),
        Command::Run { file, command, timing, format } => {
            let sql = match (file, command) {
                (Some(path), None) => std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?,
                (None, Some(sql)) => sql,
                _ => bail!("give either a script file or -c \"SQL\""),
            };
            let print = render::PrintOptions { format, timing };
            let ending = runtime.block_on(render::run_script(&mut session, &sql, print, &mut std::io::stdout(), &mut interrupts));
            // A stop the user asked for, or a reader that had seen enough (`| head`), is no failure.
            Ok(if ending == render::Ending::Failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
    }
}
