//! `CREATE TABLE` with Flink-style watermarks and WITH options.
//!
//! ```sql
//! CREATE TABLE [IF NOT EXISTS] clicks (
//!   user_id BIGINT, ts TIMESTAMP,
//!   WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
//! ) WITH (connector = 'generator', 'rows' = '1000')
//! ```
//! sqlparser's own CREATE TABLE knows neither the WATERMARK clause nor quoted
//! option keys, so Sluice parses this statement itself, reusing sqlparser for
//! column definitions and expressions.

use sqlparser::ast::{ColumnDef, Expr, Ident, ObjectName, Value};
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::Token;

/// `WATERMARK FOR column AS expr`.
#[derive(Debug, Clone, PartialEq)]
pub struct WatermarkClause {
    pub column: Ident,
    pub expr: Expr,
}

/// `col TYPE METADATA [FROM 'key'] [VIRTUAL]`: a column the connector fills
/// from a record's metadata (the key defaults to the column's name); a VIRTUAL
/// one is read but never written by a sink.
#[derive(Debug, Clone, PartialEq)]
pub struct MetadataColumn {
    pub column: Ident,
    pub key: Option<String>,
    pub is_virtual: bool,
}

/// A parsed `CREATE TABLE`.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateTable {
    pub name: ObjectName,
    pub if_not_exists: bool,
    pub columns: Vec<ColumnDef>,
    pub watermark: Option<WatermarkClause>,
    /// `PRIMARY KEY (...) NOT ENFORCED`: the key of a versioned (upsert) table.
    pub primary_key: Vec<Ident>,
    /// Columns declared `METADATA [FROM 'key'] [VIRTUAL]`.
    pub metadata: Vec<MetadataColumn>,
    /// `WITH (key = value, ...)` in order of appearance, keys as written.
    pub options: Vec<(String, String)>,
}

/// True if the parser is at `CREATE TABLE` (or `CREATE TEMPORARY TABLE`).
pub fn at_create_table(parser: &Parser) -> bool {
    let [a, b, c] = parser.peek_tokens::<3>();
    let is = |t: &Token, k: Keyword| matches!(t, Token::Word(w) if w.keyword == k);
    is(&a, Keyword::CREATE) && (is(&b, Keyword::TABLE) || (is(&b, Keyword::TEMPORARY) && is(&c, Keyword::TABLE)))
}

/// Parses a whole `CREATE TABLE` statement (without the trailing `;`).
pub fn parse_create_table(parser: &mut Parser) -> Result<CreateTable, ParserError> {
    parser.expect_keyword(Keyword::CREATE)?;
    let _temporary = parser.parse_keyword(Keyword::TEMPORARY);
    parser.expect_keyword(Keyword::TABLE)?;
    let if_not_exists = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = parser.parse_object_name(false)?;
    parser.expect_token(&Token::LParen)?;
    let mut columns = Vec::new();
    let mut watermark = None;
    let mut primary_key = Vec::new();
    let mut metadata = Vec::new();
    loop {
        if at_word(parser, "WATERMARK") {
            if watermark.is_some() {
                return parser_error("only one WATERMARK clause is allowed");
            }
            parser.next_token();
            parser.expect_keyword(Keyword::FOR)?;
            let column = parser.parse_identifier()?;
            parser.expect_keyword(Keyword::AS)?;
            let expr = parser.parse_expr()?;
            watermark = Some(WatermarkClause { column, expr });
        } else if parser.parse_keywords(&[Keyword::PRIMARY, Keyword::KEY]) {
            if !primary_key.is_empty() {
                return parser_error("only one PRIMARY KEY clause is allowed");
            }
            primary_key = parser.parse_parenthesized_column_list(sqlparser::parser::IsOptional::Mandatory, false)?;
            // Flink's `NOT ENFORCED`: Sluice never enforces keys either.
            if parser.parse_keyword(Keyword::NOT) {
                if !at_word(parser, "ENFORCED") {
                    return parser_error("expected ENFORCED after PRIMARY KEY (...) NOT");
                }
                parser.next_token();
            }
        } else {
            let column = parser.parse_column_def()?;
            if at_word(parser, "METADATA") {
                parser.next_token();
                let key = match parser.parse_keyword(Keyword::FROM) {
                    true => Some(parser.parse_literal_string()?),
                    false => None,
                };
                let is_virtual = at_word(parser, "VIRTUAL");
                if is_virtual {
                    parser.next_token();
                }
                metadata.push(MetadataColumn { column: column.name.clone(), key, is_virtual });
            }
            columns.push(column);
        }
        if parser.consume_token(&Token::Comma) {
            continue;
        }
        parser.expect_token(&Token::RParen)?;
        break;
    }
    let mut options = Vec::new();
    if parser.parse_keyword(Keyword::WITH) {
        parser.expect_token(&Token::LParen)?;
        loop {
            let key = parse_option_part(parser, "option name")?;
            parser.expect_token(&Token::Eq)?;
            let value = parse_option_part(parser, "option value")?;
            options.push((key, value));
            if parser.consume_token(&Token::Comma) {
                continue;
            }
            parser.expect_token(&Token::RParen)?;
            break;
        }
    }
    Ok(CreateTable { name, if_not_exists, columns, watermark, primary_key, metadata, options })
}

fn at_word(parser: &Parser, word: &str) -> bool {
    matches!(parser.peek_token().token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word))
}

fn parser_error<T>(msg: &str) -> Result<T, ParserError> {
    Err(ParserError::ParserError(msg.to_string()))
}

/// An option key or value: a quoted string, a number, or a dotted word.
fn parse_option_part(parser: &mut Parser, what: &str) -> Result<String, ParserError> {
    let token = parser.next_token();
    match token.token {
        Token::SingleQuotedString(s) | Token::DoubleQuotedString(s) => Ok(s),
        Token::Number(n, _) => Ok(n),
        Token::Word(w) => {
            let mut s = w.value;
            while parser.consume_token(&Token::Period) {
                match parser.next_token().token {
                    Token::Word(next) => {
                        s.push('.');
                        s.push_str(&next.value);
                    }
                    other => return parser_error(&format!("expected {what}, found {other}")),
                }
            }
            Ok(s)
        }
        _ => parser.expected(what, token),
    }
}

/// Renders an option value for display (as a SQL string literal).
pub fn quote(value: &str) -> String {
    Value::SingleQuotedString(value.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::SluiceDialect;

    fn parse(sql: &str) -> Result<CreateTable, ParserError> {
        let mut p = Parser::new(&SluiceDialect).try_with_sql(sql)?;
        parse_create_table(&mut p)
    }

    #[test]
    fn watermark_and_options() -> Result<(), ParserError> {
        let t = parse(
            "CREATE TABLE clicks (user_id BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) \
             WITH (connector = 'kafka', 'bootstrap.servers' = 'localhost:9092', rows = 10)",
        )?;
        assert_eq!(t.name.to_string(), "clicks");
        assert_eq!(t.columns.len(), 2);
        let wm = t.watermark.expect("watermark");
        assert_eq!(wm.column.value, "ts");
        assert_eq!(wm.expr.to_string(), "ts - INTERVAL '5' SECOND");
        assert_eq!(
            t.options,
            vec![
                ("connector".to_string(), "kafka".to_string()),
                ("bootstrap.servers".to_string(), "localhost:9092".to_string()),
                ("rows".to_string(), "10".to_string()),
            ]
        );
        Ok(())
    }

    #[test]
    fn errors_name_the_problem() {
        let err = parse("CREATE TABLE t (a BIGINT, WATERMARK ts AS ts)").err().map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("FOR"));
        let err = parse("CREATE TABLE t (a BIGINT) WITH (connector 'x')").err().map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("="));
    }
}
