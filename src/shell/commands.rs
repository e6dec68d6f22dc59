//! The shell's backslash commands.

/// What a backslash command asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum BackslashCommand {
    Quit,
    Help,
    Timing,
    /// A command answered by running SQL.
    Sql(String),
}

pub const HELP: &str = "\
Statements end with ';' and may span lines. Ctrl-C cancels a running query.
  \\q            quit
  \\?            this help
  \\d            list tables and views
  \\d NAME       describe a table
  \\df           list functions
  \\timing       toggle printing how long statements take
SQL:
  CREATE TABLE t (col TYPE, ..., WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) WITH (connector = '...', ...);
  CREATE VIEW v AS SELECT ...;   DROP TABLE t;   DROP VIEW v;
  SHOW TABLES;   DESCRIBE t;   EXPLAIN SELECT ...;   SHOW METRICS;   SHOW FUNCTIONS;
  SELECT window_start, count(*) FROM TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), INTERVAL '1' MINUTE))
    GROUP BY window_start, window_end;
  INSERT INTO sink_table SELECT ...;
Connectors: generator (clickstream), file (json, csv; sinks also parquet), stdout.";

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
    }
}
