//! Splits SQL text into statements: Sluice's own (`CREATE TABLE`, `SHOW METRICS`)
//! and everything sqlparser parses with [`SluiceDialect`].

use sqlparser::ast::{ObjectName, Statement};
use sqlparser::keywords::Keyword;
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
    /// `CREATE [OR REPLACE] FUNCTION name LANGUAGE rust AS 'path/to/lib.so'`.
    CreateNativeFunction { name: ObjectName, or_replace: bool, language: String, path: String },
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
    if let Some(native) = parse_native_function(parser)? {
        return Ok(native);
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

/// `CREATE [OR REPLACE] FUNCTION name LANGUAGE lang AS 'path'` (no argument list:
/// a plug-in declares its own signature); `None`, consuming nothing, otherwise.
fn parse_native_function(parser: &mut Parser) -> Result<Option<SluiceStatement>, ParserError> {
    let words: Vec<String> = parser
        .peek_tokens::<6>()
        .iter()
        .map(|t| match t {
            Token::Word(w) => w.value.to_ascii_uppercase(),
            _ => String::new(),
        })
        .collect();
    let or_replace = words.get(1).is_some_and(|w| w == "OR") && words.get(2).is_some_and(|w| w == "REPLACE");
    let at = if or_replace { 3 } else { 1 };
    let is_native = words[0] == "CREATE"
        && words.get(at).is_some_and(|w| w == "FUNCTION")
        && words.get(at + 2).is_some_and(|w| w == "LANGUAGE");
    if !is_native {
        return Ok(None);
    }
    for _ in 0..=at {
        parser.next_token();
    }
    let name = parser.parse_object_name(false)?;
    parser.expect_keyword(Keyword::LANGUAGE)?;
    let language = parser.parse_identifier()?.value;
    parser.expect_keyword(Keyword::AS)?;
    let path = parser.parse_literal_string()?;
    Ok(Some(SluiceStatement::CreateNativeFunction { name, or_replace, language, path }))
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
