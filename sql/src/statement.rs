//! Splits SQL text into statements: Sluice's own (`CREATE TABLE`, `SHOW METRICS`)
//! and everything sqlparser parses with [`SluiceDialect`].
//!
//! Nesting is bounded here, before anything walks the tree: planning, optimising,
//! printing and dropping an expression all recurse once per level, so a chain of
//! thousands of `OR`s (which sqlparser builds in a loop, without its own recursion
//! limit) would otherwise overflow the stack and abort the whole process.

use std::ops::ControlFlow;

use sqlparser::ast::{Expr, ObjectName, Statement, Value, VisitMut, VisitorMut};
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Token, Tokenizer};

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
    /// `EXECUTE STATEMENT SET BEGIN INSERT ...; INSERT ...; END`: INSERTs run
    /// as one job (see [`crate::statement_set`]).
    StatementSet(Vec<Statement>),
    /// `EXPLAIN STATEMENT SET BEGIN ... END`: the plan of the set's pipeline.
    ExplainStatementSet(Vec<Statement>),
}

/// Parses every `;`-separated statement of `sql`.
pub fn parse_statements(sql: &str) -> Result<Vec<SluiceStatement>, ParserError> {
    let dialect = SluiceDialect;
    check_chains(&dialect, sql)?;
    let mut parser = Parser::new(&dialect).try_with_sql(sql)?;
    let mut statements = Vec::new();
    loop {
        while parser.consume_token(&Token::SemiColon) {}
        if parser.peek_token().token == Token::EOF {
            break;
        }
        let mut statement = parse_one(&mut parser)?;
        check_depth(&mut statement)?;
        statements.push(statement);
        if !parser.consume_token(&Token::SemiColon) && parser.peek_token().token != Token::EOF {
            return parser.expected("end of statement", parser.peek_token());
        }
    }
    Ok(statements)
}

/// The deepest expression a statement may hold. Deep enough for any query a
/// person writes (long lists of alternatives belong in `IN (...)`, which is flat).
pub const MAX_EXPR_DEPTH: usize = 1000;

/// Fails if an expression of `statement` nests deeper than [`MAX_EXPR_DEPTH`].
/// A statement that is refused is taken apart in pieces no deeper than the
/// limit, so that even dropping it cannot overflow the stack.
fn check_depth(statement: &mut SluiceStatement) -> Result<(), ParserError> {
    let mut cutter = DepthCutter { depth: 0, cut: Vec::new() };
    match statement {
        SluiceStatement::Sql(s) => {
            let _ = s.visit(&mut cutter);
        }
        SluiceStatement::CreateTable(t) => {
            if let Some(w) = &mut t.watermark {
                let _ = w.expr.visit(&mut cutter);
            }
        }
        SluiceStatement::StatementSet(set) | SluiceStatement::ExplainStatementSet(set) => {
            for s in set {
                let _ = s.visit(&mut cutter);
            }
        }
        SluiceStatement::ShowMetrics | SluiceStatement::CreateNativeFunction { .. } => {}
    }
    if cutter.cut.is_empty() {
        return Ok(());
    }
    *statement = SluiceStatement::ShowMetrics;
    // Each piece is cut again until none is deeper than the limit.
    while let Some(mut piece) = cutter.cut.pop() {
        cutter.depth = 0;
        let _ = piece.visit(&mut cutter);
    }
    Err(ParserError::ParserError(format!(
        "the statement nests expressions more than {MAX_EXPR_DEPTH} deep (a long chain of OR or AND?); \
         write long lists of alternatives as `column IN (...)`"
    )))
}

/// The most set operations and joins one statement may chain. The parser builds
/// these chains in a loop, and planning recurses once per link.
pub const MAX_CHAINED: usize = 1000;

/// Fails if a statement of `sql` chains more than [`MAX_CHAINED`] `UNION`,
/// `INTERSECT`, `EXCEPT` or `JOIN`s; counted on the tokens, before any tree
/// that deep exists.
fn check_chains(dialect: &SluiceDialect, sql: &str) -> Result<(), ParserError> {
    let tokens = Tokenizer::new(dialect, sql).tokenize().map_err(|e| ParserError::TokenizerError(e.to_string()))?;
    let mut chained = 0;
    for token in &tokens {
        match token {
            Token::SemiColon => chained = 0,
            Token::Word(w) if matches!(w.keyword, Keyword::UNION | Keyword::INTERSECT | Keyword::EXCEPT | Keyword::MINUS | Keyword::JOIN) => {
                chained += 1;
                if chained > MAX_CHAINED {
                    return Err(ParserError::ParserError(format!(
                        "a statement may chain at most {MAX_CHAINED} UNION, INTERSECT, EXCEPT or JOIN"
                    )));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Replaces every expression deeper than [`MAX_EXPR_DEPTH`] by NULL, keeping
/// what it cut off.
struct DepthCutter {
    depth: usize,
    cut: Vec<Expr>,
}

impl VisitorMut for DepthCutter {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        self.depth += 1;
        if self.depth > MAX_EXPR_DEPTH {
            self.cut.push(std::mem::replace(expr, Expr::value(Value::Null)));
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, _expr: &mut Expr) -> ControlFlow<()> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }
}

fn parse_one(parser: &mut Parser) -> Result<SluiceStatement, ParserError> {
    if at_create_table(parser) {
        return parse_create_table(parser).map(|c| SluiceStatement::CreateTable(Box::new(c)));
    }
    if let Some(native) = parse_native_function(parser)? {
        return Ok(native);
    }
    if let Some(set) = crate::statement_set::parse_statement_set(parser)? {
        return Ok(SluiceStatement::StatementSet(set));
    }
    if let Some(set) = crate::statement_set::parse_explained_statement_set(parser)? {
        return Ok(SluiceStatement::ExplainStatementSet(set));
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

    /// Run on a stack as large as Sluice's own threads have (see `main.rs`).
    #[test]
    fn deep_expressions_are_refused_not_overflowed() -> Result<(), Box<dyn std::error::Error>> {
        let check = || -> Result<(), ParserError> {
            let chain = |n: usize| format!("SELECT * FROM t WHERE {}", vec!["a = 1"; n].join(" OR "));
            assert_eq!(parse_statements(&chain(MAX_EXPR_DEPTH - 1))?.len(), 1);
            for n in [MAX_EXPR_DEPTH + 1, 200_000] {
                let e = parse_statements(&chain(n)).map(|_| ()).unwrap_err();
                assert!(e.to_string().contains("more than 1000 deep"), "{e}");
            }
            Ok(())
        };
        std::thread::Builder::new().stack_size(64 << 20).spawn(check)?.join().map_err(|_| "panicked")??;
        Ok(())
    }

    #[test]
    fn long_chains_of_unions_are_refused() -> Result<(), ParserError> {
        let unions = |n: usize| format!("SELECT 1 {}; SELECT 2", vec!["UNION ALL SELECT 1"; n].join(" "));
        assert_eq!(parse_statements(&unions(MAX_CHAINED))?.len(), 2);
        let e = parse_statements(&unions(20_000)).map(|_| ()).unwrap_err();
        assert!(e.to_string().contains("at most 1000 UNION"), "{e}");
        Ok(())
    }

    #[test]
    fn missing_separator_is_an_error() {
        assert!(parse_statements("SELECT 1 SELECT 2").is_err());
    }
}
