//! Flink's statement sets: several `INSERT INTO`s that run as one job.
//!
//! ```sql
//! EXECUTE STATEMENT SET BEGIN
//!   INSERT INTO alerts SELECT ...;
//!   INSERT INTO funnel SELECT ...;
//! END;
//! ```
//!
//! (Flink's SQL client also takes `BEGIN STATEMENT SET; ... END;`, and
//! `EXPLAIN STATEMENT SET BEGIN ... END` shows the plan.) The INSERTs are the
//! outputs of one pipeline: a table several of them read is read once, and
//! its rows go to each (see [`crate::table_reads`]). They start, checkpoint,
//! restart and stop together; one checkpoint holds them all, under
//! `pipeline.name` or a hash of the set.

use std::sync::Arc;

use sluice_engine::sink::ChannelSink;
use sluice_engine::{Pipeline, Sink};
use sqlparser::ast::Statement;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::Token;

use crate::error::{plan_err, Result, SqlError};
use crate::session::{insert_into, query_id, PlannedOutput, Session};
use crate::table_reads::TableReads;

/// The words before a statement set's statements, in either form.
const OPENINGS: [&[&str]; 2] = [&["EXECUTE", "STATEMENT", "SET", "BEGIN"], &["BEGIN", "STATEMENT", "SET"]];

/// The words before the statements of a statement set to explain.
const EXPLAIN_OPENINGS: [&[&str]; 2] = [&["EXPLAIN", "STATEMENT", "SET", "BEGIN"], &["EXPLAIN", "EXECUTE", "STATEMENT", "SET", "BEGIN"]];

/// Consumes `openings`' words if the parser is at one of them.
fn opening(parser: &mut Parser, openings: &[&[&str]]) -> bool {
    let words: Vec<String> = parser
        .peek_tokens::<5>()
        .iter()
        .map(|t| match t {
            Token::Word(w) => w.value.to_ascii_uppercase(),
            _ => String::new(),
        })
        .collect();
    let Some(opening) = openings.iter().find(|o| o.iter().zip(&words).all(|(a, b)| *a == b)) else {
        return false;
    };
    for _ in 0..opening.len() {
        parser.next_token();
    }
    true
}

/// Parses a statement set if the parser is at one (consuming nothing otherwise):
/// its INSERT statements, in order.
pub(crate) fn parse_statement_set(parser: &mut Parser) -> Result<Option<Vec<Statement>>, ParserError> {
    match opening(parser, &OPENINGS) {
        true => parse_inserts(parser).map(Some),
        false => Ok(None),
    }
}

/// Parses `EXPLAIN STATEMENT SET BEGIN ... END` if the parser is at one.
pub(crate) fn parse_explained_statement_set(parser: &mut Parser) -> Result<Option<Vec<Statement>>, ParserError> {
    match opening(parser, &EXPLAIN_OPENINGS) {
        true => parse_inserts(parser).map(Some),
        false => Ok(None),
    }
}

/// A set's INSERT statements up to its `END`.
fn parse_inserts(parser: &mut Parser) -> Result<Vec<Statement>, ParserError> {
    let mut inserts = Vec::new();
    loop {
        while parser.consume_token(&Token::SemiColon) {}
        match parser.peek_token().token {
            Token::Word(w) if w.value.eq_ignore_ascii_case("END") => {
                parser.next_token();
                break;
            }
            Token::EOF => return parser.expected("END of the statement set", parser.peek_token()),
            _ => {}
        }
        let statement = parser.parse_statement()?;
        if !matches!(statement, Statement::Insert(_)) {
            return Err(ParserError::ParserError(format!(
                "a statement set holds only INSERT INTO statements, not: {statement}"
            )));
        }
        inserts.push(statement);
    }
    if inserts.is_empty() {
        return Err(ParserError::ParserError("a statement set needs at least one INSERT INTO".into()));
    }
    Ok(inserts)
}

/// A statement set planned as one pipeline.
pub(crate) struct CompiledSet {
    pub pipeline: Pipeline,
    /// The INSERTs' target tables, in the order of the pipeline's outputs.
    pub targets: Vec<String>,
    /// The set's id: its checkpoints' default name, its shared sources' query id.
    pub id: String,
}

impl Session {
    /// Plans every INSERT of a set as an output of one pipeline whose tables
    /// are read once each.
    pub(crate) async fn compile_set(&self, inserts: &[Statement]) -> Result<CompiledSet> {
        let catalog = self.catalog()?;
        let metrics = self.new_metrics();
        let mut reads = TableReads::shared();
        let mut outputs = Vec::with_capacity(inserts.len());
        let mut targets = Vec::with_capacity(inserts.len());
        let mut ids = Vec::with_capacity(inserts.len());
        for insert in inserts {
            let Statement::Insert(insert) = insert else { return plan_err(format!("a statement set holds only INSERT INTO statements, not: {insert}")) };
            let (target, query) = insert_into(insert)?;
            let table = catalog.table(&target).ok_or_else(|| SqlError::Catalog(format!("INSERT INTO {target}: no such table")))?;
            let id = query_id(Some(table), query);
            // An INSERT's rows go to its table, not to a results channel.
            let results: Box<dyn Sink> = Box::new(ChannelSink::new(1).0);
            match self.plan_output(&catalog, query, Some(table), results, &metrics, &mut reads, &id).await? {
                PlannedOutput::Stream(output) => outputs.push(output),
                PlannedOutput::Batch(_) => return plan_err(format!("INSERT INTO {target}: the query must read from a table")),
            }
            targets.push(target);
            ids.push(id);
        }
        let id = format!("{:016x}", sluice_engine::stable_hash::fnv1a(ids.join("\n").as_bytes()));
        let shared_sources = reads.open(&id)?;
        let pipeline = Pipeline { outputs, shared_sources, metrics: Arc::clone(&metrics), options: self.job_options(), checkpoints: None };
        Ok(CompiledSet { pipeline, targets, id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::SluiceDialect;

    fn parse(sql: &str) -> Result<Option<Vec<Statement>>, ParserError> {
        let dialect = SluiceDialect;
        let mut parser = Parser::new(&dialect).try_with_sql(sql)?;
        parse_statement_set(&mut parser)
    }

    #[test]
    fn explain_takes_a_set_in_flink_form() -> Result<(), ParserError> {
        let dialect = SluiceDialect;
        for sql in ["EXPLAIN STATEMENT SET BEGIN INSERT INTO a SELECT * FROM t; END", "EXPLAIN EXECUTE STATEMENT SET BEGIN INSERT INTO a SELECT * FROM t; END"] {
            let mut parser = Parser::new(&dialect).try_with_sql(sql)?;
            assert_eq!(parse_explained_statement_set(&mut parser)?.map(|s| s.len()), Some(1), "{sql}");
        }
        let mut parser = Parser::new(&dialect).try_with_sql("EXPLAIN SELECT 1")?;
        assert_eq!(parse_explained_statement_set(&mut parser)?, None);
        Ok(())
    }

    #[test]
    fn both_forms_give_their_inserts_in_order() -> Result<(), ParserError> {
        let flink = parse("EXECUTE STATEMENT SET BEGIN INSERT INTO a SELECT * FROM t; INSERT INTO b SELECT * FROM t; END")?;
        let client = parse("BEGIN STATEMENT SET; INSERT INTO a SELECT * FROM t; INSERT INTO b SELECT * FROM t; END")?;
        for set in [flink, client] {
            let targets: Vec<String> = set.unwrap_or_default().iter().map(|s| s.to_string()[..13].to_string()).collect();
            assert_eq!(targets, vec!["INSERT INTO a", "INSERT INTO b"]);
        }
        assert_eq!(parse("SELECT 1")?, None);
        Ok(())
    }

    #[test]
    fn only_inserts_and_an_end() {
        let select = parse("EXECUTE STATEMENT SET BEGIN SELECT 1; END").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(select.contains("only INSERT INTO"), "{select}");
        let open = parse("EXECUTE STATEMENT SET BEGIN INSERT INTO a SELECT * FROM t;").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(open.contains("END of the statement set"), "{open}");
        let empty = parse("EXECUTE STATEMENT SET BEGIN END").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(empty.contains("at least one"), "{empty}");
    }
}
