//! When the lines typed so far hold complete statements.
//!
//! A statement ends at a `;` that is SQL, not one inside a string literal, a
//! quoted identifier or a comment: a line ending in `'a;` continues a string,
//! while `SELECT 1; -- why` is complete. The scan follows the rules of
//! sluice_sql's dialect (sqlparser's generic one): `'…'` strings with `''` for a
//! quote, `"…"` and `` `…` `` identifiers, `--` comments to the end of the line
//! and `/* … */` comments, which do not nest.

/// Whether `sql` ends with a `;` outside strings, identifiers and comments
/// (trailing comments and blanks aside), so the shell can run it.
pub fn ends_statement(sql: &str) -> bool {
    let mut chars = sql.chars().peekable();
    let mut last_is_semicolon = false;
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' | '`' => {
                // A doubled quote closes the literal and opens the next one.
                if !chars.by_ref().any(|d| d == c) {
                    return false;
                }
                last_is_semicolon = false;
            }
            '-' if chars.peek() == Some(&'-') => {
                if !chars.by_ref().any(|d| d == '\n') {
                    break;
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut star = false;
                let closed = chars.by_ref().any(|d| {
                    let closes = star && d == '/';
                    star = d == '*';
                    closes
                });
                if !closed {
                    return false;
                }
            }
            c if c.is_whitespace() => {}
            ';' => last_is_semicolon = true,
            _ => last_is_semicolon = false,
        }
    }
    last_is_semicolon
}

#[cfg(test)]
mod tests {
    use super::ends_statement;

    #[test]
    fn a_semicolon_ends_a_statement_only_outside_literals_and_comments() {
        for complete in [
            "SELECT 1;",
            "SELECT 1;  \n",
            "SELECT 1; -- a note",
            "SELECT 1; /* a note */",
            "SELECT 'a;\nb';",
            "SELECT 'it''s;';",
            "SELECT \"odd;name\" FROM t;",
            "-- note\nSELECT 1;",
            "SELECT 1 /* ; */;",
        ] {
            assert!(ends_statement(complete), "{complete:?}");
        }
        for incomplete in [
            "",
            "SELECT 1",
            "SELECT 'a;",
            "SELECT 'it''s;",
            "SELECT \"odd;",
            "SELECT 1 -- ;",
            "SELECT 1 /* ;",
            "SELECT 1; /* not closed",
            "SELECT 1; SELECT 2",
        ] {
            assert!(!ends_statement(incomplete), "{incomplete:?}");
        }
    }
}
