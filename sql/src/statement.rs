//! Splits SQL text into statements: Sluice's own (`CREATE TABLE`, `SHOW METRICS`)
//! and everything sqlparser parses with [`SluiceDialect`].

use sqlparser::ast::Statement;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::Token;

use crate::create_table::{at_create_table, parse_create_table, CreateTable};
use crate::dialect::SluiceDialect;

/// One statement of a script.
#[derive(Debug, Clone, PartialEq)]
pub enum SluiceStatement {
    CreateTable(Box<CreateTable>),
    /// `SHOW METRICS`: counters of the session's most recent query.
    ShowMetrics,
    /// Anything sqlparser parses: queries, INSERT, CREATE VIEW, DROP, SHOW, DESCRIBE, EXPLAIN.
    Sql(Box<Statement>),
}

/// Parses every `;`-separated statement of `sql`.
pub fn parse_statements(sql: &str) -> Result<Vec<SluiceStatement>, ParserError> {
    let dialect = SluiceDialect;
    let mut parser = Parser::new(&dialect).try_with_sql(sql)?;
    let mut statements = Vec::new();
    loop {
        while parser.consume_token(&Token::SemiColon) {}
        if parser.peek_token().token == Token::EOF {
            break;
        }
        statements.push(parse_one(&mut parser)?);
        if !parser.consume_token(&Token::SemiColon) && parser.peek_token().token != Token::EOF {
            return parser.expected("end of statement", parser.peek_token());
        }
    }
    Ok(statements)
}

fn parse_one(parser: &mut Parser) -> Result<SluiceStatement, ParserError> {
    if at_create_table(parser) {
        return parse_create_table(parser).map(|c| SluiceStatement::CreateTable(Box::new(c)));
    }
    let [a, b] = parser.peek_tokens::<2>();
    if let (Token::Word(a), Token::Word(b)) = (&a, &b) {
        if a.value.eq_ignore_ascii_case("SHOW") && b.value.eq_ignore_ascii_case("METRICS") {
            parser.next_token();
            parser.next_token();
            return Ok(SluiceStatement::ShowMetrics);
        }
    }
    Ok(SluiceStatement::Sql(Box::new(parser.parse_statement()?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_mixed_script() -> Result<(), ParserError> {
        let stmts = parse_statements(
            "CREATE TABLE t (a BIGINT) WITH (connector = 'generator'); SELECT a FROM t;\n SHOW METRICS; ;",
        )?;
        assert_eq!(stmts.len(), 3);
        assert!(matches!(stmts[0], SluiceStatement::CreateTable(_)));
        assert!(matches!(stmts[1], SluiceStatement::Sql(_)));
        assert_eq!(stmts[2], SluiceStatement::ShowMetrics);
        Ok(())
    }

    #[test]
    fn missing_separator_is_an_error() {
        assert!(parse_statements("SELECT 1 SELECT 2").is_err());
    }
}
