//! Flink's statement sets: several `INSERT INTO`s that run as one job.
//!
//! ```sql
//! EXECUTE STATEMENT SET BEGIN
//!   INSERT INTO alerts SELECT ...;
//!   INSERT INTO funnel SELECT ...;
//! END;
//! ```
//!
//! (Flink's SQL client also takes `BEGIN STATEMENT SET; ... END;`.) The
//! INSERTs start together and are stopped together; a failure of one stops
//! the others. Each keeps its own checkpoints: under `pipeline.name` followed
//! by `-` and its target table when a name is set, else under its own hash.
//! Each still reads its sources itself: a set does not share a read of a
//! table between its INSERTs yet.

use sqlparser::ast::Statement;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::Token;

/// The words before a statement set's statements, in either form.
const OPENINGS: [&[&str]; 2] = [&["EXECUTE", "STATEMENT", "SET", "BEGIN"], &["BEGIN", "STATEMENT", "SET"]];

/// Parses a statement set if the parser is at one (consuming nothing otherwise):
/// its INSERT statements, in order.
pub(crate) fn parse_statement_set(parser: &mut Parser) -> Result<Option<Vec<Statement>>, ParserError> {
    let words: Vec<String> = parser
        .peek_tokens::<4>()
        .iter()
        .map(|t| match t {
            Token::Word(w) => w.value.to_ascii_uppercase(),
            _ => String::new(),
        })
        .collect();
    let Some(opening) = OPENINGS.iter().find(|o| o.iter().zip(&words).all(|(a, b)| *a == b)) else {
        return Ok(None);
    };
    for _ in 0..opening.len() {
        parser.next_token();
    }
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
    Ok(Some(inserts))
}

/// The checkpoint name of the INSERT into `target` in a set run under
/// `pipeline.name` = `name`.
pub(crate) fn member_name(name: &str, target: &str) -> String {
    format!("{name}-{target}")
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
