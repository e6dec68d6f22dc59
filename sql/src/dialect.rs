//! The SQL dialect: DataFusion's generic dialect plus Flink's `TABLE t` argument.
//!
//! Window table-valued functions take their input table as `TABLE name`
//! (`TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '1' MINUTE)`), and a session
//! window may partition it, `TABLE name PARTITION BY k` or `PARTITION BY (k1, k2)`
//! (Flink's set semantics). sqlparser parses neither inside a function call, so
//! [`SluiceDialect::parse_prefix`] parses them into a call of the marker function
//! `TABLE(name, k1, k2)`, which [`crate::window_tvf`] consumes (see [`as_table_arg`]).
//! Everything else behaves exactly like sqlparser's `GenericDialect`.

use std::any::TypeId;

use sqlparser::ast::{
    Expr, Function, FunctionArg, FunctionArgExpr, FunctionArgumentList, FunctionArguments, Ident, ObjectName,
};
use sqlparser::dialect::{Dialect, GenericDialect};
use sqlparser::keywords::Keyword;
use sqlparser::parser::{IsOptional, Parser, ParserError};
use sqlparser::tokenizer::Token;

/// Name of the marker function a `TABLE name` argument parses into.
pub const TABLE_ARG_MARKER: &str = "TABLE";

/// Sluice's SQL dialect.
#[derive(Debug, Default)]
pub struct SluiceDialect;

/// Forwards the listed `fn(&self) -> bool` capabilities to `GenericDialect`.
macro_rules! like_generic {
    ($($name:ident),* $(,)?) => {
        $(fn $name(&self) -> bool { GenericDialect.$name() })*
    };
}

impl Dialect for SluiceDialect {
    /// Identify as the generic dialect, so sqlparser's dialect checks treat us as it.
    fn dialect(&self) -> TypeId {
        TypeId::of::<GenericDialect>()
    }

    fn is_delimited_identifier_start(&self, ch: char) -> bool {
        GenericDialect.is_delimited_identifier_start(ch)
    }

    fn is_identifier_start(&self, ch: char) -> bool {
        GenericDialect.is_identifier_start(ch)
    }

    fn is_identifier_part(&self, ch: char) -> bool {
        GenericDialect.is_identifier_part(ch)
    }

    fn parse_prefix(&self, parser: &mut Parser) -> Option<Result<Expr, ParserError>> {
        let [first, second] = parser.peek_tokens::<2>();
        match (first, second) {
            (Token::Word(w), Token::Word(_)) if w.keyword == Keyword::TABLE => {
                parser.next_token();
                Some(parse_table_arg(parser))
            }
            // `TABLE(name, k1, k2)`: how the marker prints, so a rewritten statement parses again.
            (Token::Word(w), Token::LParen) if w.keyword == Keyword::TABLE => {
                parser.next_token();
                parser.next_token();
                Some(parse_printed_table_arg(parser))
            }
            _ => None,
        }
    }

    /// `JOIN t FOR SYSTEM_TIME AS OF s.ts` (temporal joins).
    fn supports_table_versioning(&self) -> bool {
        true
    }

    like_generic!(
        supports_unicode_string_literal,
        supports_partition_by_after_order_by,
        supports_array_join_syntax,
        supports_group_by_expr,
        supports_group_by_with_modifier,
        supports_left_associative_joins_without_parens,
        supports_connect_by,
        supports_match_recognize,
        supports_pipe_operator,
        supports_start_transaction_modifier,
        supports_window_function_null_treatment_arg,
        supports_dictionary_syntax,
        supports_window_clause_named_window_reference,
        supports_parenthesized_set_variables,
        supports_select_wildcard_except,
        support_map_literal_syntax,
        allow_extract_custom,
        allow_extract_single_quotes,
        supports_extract_comma_syntax,
        supports_create_view_comment_syntax,
        supports_parens_around_table_factor,
        supports_values_as_table_factor,
        supports_create_index_with_clause,
        supports_explain_with_utility_options,
        supports_limit_comma,
        supports_update_order_by,
        supports_from_first_select,
        supports_projection_trailing_commas,
        supports_asc_desc_in_column_definition,
        supports_try_convert,
        supports_bitwise_shift_operators,
        supports_comment_on,
        supports_load_extension,
        supports_named_fn_args_with_assignment_operator,
        supports_struct_literal,
        supports_empty_projections,
        supports_nested_comments,
        supports_multiline_comment_hints,
        supports_user_host_grantee,
        supports_string_escape_constant,
        supports_array_typedef_with_brackets,
        supports_match_against,
        supports_set_names,
        supports_comma_separated_set_assignments,
        supports_filter_during_aggregation,
        supports_select_wildcard_exclude,
        supports_data_type_signed_suffix,
        supports_interval_options,
        supports_quote_delimited_string,
        supports_select_wildcard_replace,
        supports_select_wildcard_ilike,
        supports_select_wildcard_rename,
        supports_optimize_table,
        supports_install,
        supports_detach,
        supports_prewhere,
        supports_with_fill,
        supports_limit_by,
        supports_interpolate,
        supports_settings,
        supports_select_format,
        supports_comment_optimizer_hint,
        supports_constraint_keyword_without_name,
        supports_key_column_option,
        supports_comma_separated_trim,
        supports_cte_without_as,
        supports_select_item_multi_column_alias,
        supports_xml_expressions,
    );
}

/// A `TABLE name [PARTITION BY ...]` argument of a window table-valued function.
#[derive(Debug, Clone, PartialEq)]
pub struct TableArg {
    pub name: ObjectName,
    /// The `PARTITION BY` columns; empty without the clause.
    pub partition_by: Vec<Ident>,
}

/// `name [PARTITION BY k | PARTITION BY (k1, k2)]`, after `TABLE`.
fn parse_table_arg(parser: &mut Parser) -> Result<Expr, ParserError> {
    let name = parser.parse_object_name(false)?;
    let mut partition_by = Vec::new();
    if parser.parse_keywords(&[Keyword::PARTITION, Keyword::BY]) {
        partition_by = match parser.peek_token().token {
            Token::LParen => parser.parse_parenthesized_column_list(IsOptional::Mandatory, false)?,
            _ => vec![parser.parse_identifier()?],
        };
    }
    Ok(table_arg(TableArg { name, partition_by }))
}

/// `name, k1, k2)`, after `TABLE(`.
fn parse_printed_table_arg(parser: &mut Parser) -> Result<Expr, ParserError> {
    let name = parser.parse_object_name(false)?;
    let mut partition_by = Vec::new();
    while parser.consume_token(&Token::Comma) {
        partition_by.push(parser.parse_identifier()?);
    }
    parser.expect_token(&Token::RParen)?;
    Ok(table_arg(TableArg { name, partition_by }))
}

/// The marker expression for a `TABLE name` argument: `TABLE(name, k1, k2)`,
/// the table's name first, then its partition columns.
fn table_arg(arg: TableArg) -> Expr {
    let parts: Vec<Ident> = arg.name.0.iter().filter_map(|p| p.as_ident().cloned()).collect();
    let name = FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::CompoundIdentifier(parts)));
    let keys = arg.partition_by.into_iter().map(|k| FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Identifier(k))));
    Expr::Function(Function {
        name: ObjectName::from(vec![Ident::new(TABLE_ARG_MARKER)]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: std::iter::once(name).chain(keys).collect(),
            clauses: vec![],
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    })
}

/// If `expr` is a `TABLE name [PARTITION BY ...]` argument, the table and its
/// partition columns.
pub fn as_table_arg(expr: &Expr) -> Option<TableArg> {
    let Expr::Function(f) = expr else { return None };
    if f.name.to_string() != TABLE_ARG_MARKER {
        return None;
    }
    let FunctionArguments::List(list) = &f.args else { return None };
    let (first, keys) = list.args.split_first()?;
    let FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::CompoundIdentifier(parts))) = first else { return None };
    let partition_by = keys
        .iter()
        .map(|k| match k {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Identifier(id))) => Some(id.clone()),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    Some(TableArg { name: ObjectName::from(parts.clone()), partition_by })
}

#[cfg(test)]
mod tests {
    use sqlparser::ast::{SetExpr, Statement, TableFactor};

    use super::*;

    #[test]
    fn parses_table_argument_of_window_tvf() -> Result<(), ParserError> {
        let sql = "SELECT * FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '1' MINUTE))";
        let stmts = Parser::parse_sql(&SluiceDialect, sql)?;
        let Statement::Query(q) = &stmts[0] else { panic!("not a query") };
        let SetExpr::Select(s) = q.body.as_ref() else { panic!("not a select") };
        let TableFactor::TableFunction { expr: Expr::Function(f), .. } = &s.from[0].relation else {
            panic!("not a table function: {:?}", s.from[0].relation)
        };
        let FunctionArguments::List(list) = &f.args else { panic!("no args") };
        let FunctionArg::Unnamed(FunctionArgExpr::Expr(first)) = &list.args[0] else { panic!("named") };
        assert_eq!(as_table_arg(first).map(|a| a.name.to_string()), Some("clicks".to_string()));
        Ok(())
    }

    /// The first argument of the table function in `sql`'s FROM.
    fn first_tvf_arg(sql: &str) -> Result<Option<TableArg>, ParserError> {
        let stmts = Parser::parse_sql(&SluiceDialect, sql)?;
        let Statement::Query(q) = &stmts[0] else { panic!("not a query") };
        let SetExpr::Select(s) = q.body.as_ref() else { panic!("not a select") };
        let TableFactor::TableFunction { expr: Expr::Function(f), .. } = &s.from[0].relation else {
            panic!("not a table function: {:?}", s.from[0].relation)
        };
        let FunctionArguments::List(list) = &f.args else { panic!("no args") };
        Ok(match &list.args[0] {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) | FunctionArg::Named { arg: FunctionArgExpr::Expr(e), .. } => {
                as_table_arg(e)
            }
            _ => None,
        })
    }

    fn keys(arg: Option<TableArg>) -> Vec<String> {
        arg.map(|a| a.partition_by.iter().map(|k| k.value.clone()).collect()).unwrap_or_default()
    }

    #[test]
    fn parses_partition_by_of_table_argument() -> Result<(), ParserError> {
        let one = "SELECT * FROM TABLE(SESSION(TABLE clicks PARTITION BY user_id, DESCRIPTOR(ts), INTERVAL '1' MINUTE))";
        assert_eq!(keys(first_tvf_arg(one)?), ["user_id"]);
        let two = "SELECT * FROM TABLE(SESSION(TABLE clicks PARTITION BY (user_id, page), DESCRIPTOR(ts), INTERVAL '1' MINUTE))";
        assert_eq!(keys(first_tvf_arg(two)?), ["user_id", "page"]);
        let named = "SELECT * FROM TABLE(SESSION(DATA => TABLE clicks PARTITION BY user_id, \
            TIMECOL => DESCRIPTOR(ts), GAP => INTERVAL '1' MINUTE))";
        assert_eq!(keys(first_tvf_arg(named)?), ["user_id"]);
        // The marker prints as `TABLE(clicks, user_id, page)`, which parses back to the same.
        let printed = Parser::parse_sql(&SluiceDialect, two)?[0].to_string();
        assert_eq!(keys(first_tvf_arg(&printed)?), ["user_id", "page"]);
        assert_eq!(Parser::parse_sql(&SluiceDialect, &printed)?[0].to_string(), printed);
        Ok(())
    }

    #[test]
    fn printed_statement_parses_back() -> Result<(), ParserError> {
        let sql = "SELECT window_start FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '1' MINUTE))";
        let printed = Parser::parse_sql(&SluiceDialect, sql)?[0].to_string();
        let again = Parser::parse_sql(&SluiceDialect, &printed)?[0].to_string();
        assert_eq!(printed, again);
        Ok(())
    }

    #[test]
    fn table_keyword_elsewhere_still_parses() -> Result<(), ParserError> {
        Parser::parse_sql(&SluiceDialect, "DROP TABLE clicks")?;
        Parser::parse_sql(&SluiceDialect, "SELECT * FROM (VALUES (1)) AS t(\"table\")")?;
        Ok(())
    }
}
