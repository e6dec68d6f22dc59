//! The shell's backslash commands, psql's and datafusion-cli's where they have one.

use sluice_connectors::output_format::OutputFormat;

/// What a backslash command asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum BackslashCommand {
    Quit,
    Help,
    Timing,
    /// `\pset format NAME`: print results so from now on; `None`: say how they print.
    Format(Option<OutputFormat>),
    /// A command answered by running SQL.
    Sql(String),
}

/// Every backslash command: how it is typed, and what it does. [`parse`]
/// accepts each of them and [`help`] lists them all.
pub const COMMANDS: &[(&str, &str)] = &[
    ("\\q", "quit (Ctrl-D too)"),
    ("\\?", "this help (\\h too)"),
    ("\\d", "list tables and views (SHOW TABLES)"),
    ("\\d NAME", "describe a table: columns, watermark (DESCRIBE NAME)"),
    ("\\df", "list functions (SHOW FUNCTIONS)"),
    ("\\timing", "toggle printing how long statements take"),
    ("\\pset format FORMAT", "print results as table, csv, json (one array) or ndjson (\\format FORMAT too)"),
];

const INTRO: &str = "\
Statements end with ';' (outside strings and comments) and may span lines.
Ctrl-C stops a running query gracefully (its sink flushed); a second Ctrl-C cancels it.
Rows print on stdout; status lines, summaries and warnings on stderr.";

const SQL: &str = "\
SQL:
  CREATE TABLE t (col TYPE, ..., WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) WITH (connector = '...', ...);
  CREATE VIEW v AS SELECT ...;   DROP TABLE t;   DROP VIEW v;
  CREATE FUNCTION f LANGUAGE rust AS '/path/to/lib.so';   DROP FUNCTION f;
  SHOW TABLES;   DESCRIBE t;   SHOW CREATE TABLE t;   EXPLAIN SELECT ...;   SHOW METRICS;   SHOW FUNCTIONS;
  SET 'parallelism' = '2';   SET 'table.exec.state.ttl' = '1 h';
  SET 'scan.watermark.alignment.max-drift' = '30 s';   SET 'sluice.memory.limit' = '2 GB';
  SELECT window_start, count(*) FROM TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), INTERVAL '1' MINUTE))
    GROUP BY window_start, window_end;
  INSERT INTO sink_table SELECT ...;
Connectors: generator, file (json, csv; sinks also parquet), kafka, lake (Parquet), stdout.";

/// What `\?` prints.
pub fn help() -> String {
    let commands: Vec<String> = COMMANDS.iter().map(|(usage, what)| format!("  {usage:<22}{what}")).collect();
    format!("{INTRO}\n{}\n{SQL}", commands.join("\n"))
}

/// Parses a line starting with a backslash.
pub fn parse(line: &str) -> Result<BackslashCommand, String> {
    let mut words = line.split_whitespace();
    let command = words.next().unwrap_or_default();
    let arg = words.next();
    match (command, arg) {
        ("\\q", None) => Ok(BackslashCommand::Quit),
        ("\\?", None) | ("\\h", None) => Ok(BackslashCommand::Help),
        ("\\timing", None) => Ok(BackslashCommand::Timing),
        ("\\d", None) => Ok(BackslashCommand::Sql("SHOW TABLES;".into())),
        ("\\d", Some(name)) => Ok(BackslashCommand::Sql(format!("DESCRIBE {name};"))),
        ("\\df", None) => Ok(BackslashCommand::Sql("SHOW FUNCTIONS;".into())),
        ("\\pset", Some("format")) | ("\\format", _) => {
            let name = if command == "\\format" { arg } else { words.next() };
            match (name, words.next()) {
                (None, _) => Ok(BackslashCommand::Format(None)),
                (Some(name), None) => name.parse().map(|f| BackslashCommand::Format(Some(f))),
                (Some(_), Some(_)) => Err(format!("{command} takes one format ({})", OutputFormat::NAMES)),
            }
        }
        ("\\pset", _) => Err(format!("\\pset sets only format: \\pset format FORMAT ({})", OutputFormat::NAMES)),
        _ => Err(format!("unknown command {line}; \\? lists the commands")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        assert_eq!(parse("\\q"), Ok(BackslashCommand::Quit));
        assert_eq!(parse("\\d clicks"), Ok(BackslashCommand::Sql("DESCRIBE clicks;".into())));
        assert!(parse("\\x").is_err());
        assert_eq!(parse("\\pset format csv"), Ok(BackslashCommand::Format(Some(OutputFormat::Csv))));
        assert_eq!(parse("\\format NDJSON"), Ok(BackslashCommand::Format(Some(OutputFormat::NdJson))));
        assert_eq!(parse("\\pset format"), Ok(BackslashCommand::Format(None)));
        assert!(parse("\\pset format xml").is_err_and(|e| e.contains("table, csv, json, ndjson")));
        assert!(parse("\\pset border 2").is_err());
    }

    #[test]
    fn help_lists_every_command_and_every_listed_command_exists() {
        let help = help();
        for (usage, what) in COMMANDS {
            assert!(parse(&usage.replace("NAME", "clicks").replace("FORMAT", "csv")).is_ok(), "{usage} does not parse");
            assert!(help.contains(&format!("  {usage:<22}{what}\n")), "\\? does not list {usage}");
        }
        // Every command parse accepts is listed (aliases in their command's line).
        for accepted in ["\\q", "\\?", "\\h", "\\d", "\\d clicks", "\\df", "\\timing", "\\pset format csv", "\\format csv"] {
            assert!(parse(accepted).is_ok());
            let listed = COMMANDS.iter().any(|(usage, what)| {
                let what = what.replace("FORMAT", "csv");
                usage.replace("NAME", "clicks").replace("FORMAT", "csv") == accepted || what.contains(&format!("({accepted} too)"))
            });
            assert!(listed, "\\? does not list {accepted}");
        }
    }
}
