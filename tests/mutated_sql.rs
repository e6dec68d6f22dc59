//! Mutated SQL ends in rows or an error, never a panic. Every statement of
//! the golden files (`tests/slt`) runs, in its file's order, as written and
//! as variants with a token dropped, repeated, swapped with its neighbour,
//! replaced by another (a keyword, a number, an interval, a name from the same
//! statement) or cut off. A panic anywhere, in the planner or in a running
//! pipeline's task, fails the test.
//!
//! `SLUICE_SQL_MUTATIONS=N` runs N variants per statement (default 1).

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use sluice_sql::{Session, StatementOutput};

/// A variant that reads a source it made unbounded is stopped after this.
const VARIANT_TIMEOUT: Duration = Duration::from_secs(3);

/// Tokens a variant may put in place of another.
const REPLACEMENTS: &[&str] = &[
    "SELECT", "FROM", "WHERE", "GROUP BY", "ORDER BY", "HAVING", "JOIN", "ON", "AND", "OR", "NOT", "NULL", "(", ")", ",", "*",
    "0", "-1", "1.5", "9223372036854775807", "''", "'x'", "INTERVAL '0' SECOND", "INTERVAL '1' DAY", "INTERVAL '-5' MINUTE",
    "TABLE", "DESCRIPTOR(ts)", "TUMBLE", "HOP", "SESSION", "CUMULATE", "ROW_NUMBER() OVER ()", "PARTITION BY", "DESC",
    "UNION ALL", "count(*)", "sum(", "window_start", "window_end", "window_time", "ts", "rn", "=", "<=", "<", "+", "-", "/",
    "CAST(", "AS", "TIMESTAMP", "BIGINT", "VARCHAR", "WATERMARK FOR", "ROLLUP(", "CUBE(", "GROUPING SETS(", "LATERAL",
];

/// Operators of two characters, kept whole.
const OPERATORS: &[&str] = &["<=", ">=", "<>", "!=", "||", "=>", "::", "->"];

/// `sql` split into words, quoted strings and single punctuation marks.
fn tokens(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = sql.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '\'' || c == '"' {
            let mut token = String::from(c);
            chars.next();
            for d in chars.by_ref() {
                token.push(d);
                if d == c {
                    break;
                }
            }
            out.push(token);
        } else if c.is_alphanumeric() || c == '_' || c == '.' || c == '$' {
            let mut token = String::new();
            while let Some(&d) = chars.peek().filter(|d| d.is_alphanumeric() || **d == '_' || **d == '.' || **d == '$') {
                token.push(d);
                chars.next();
            }
            out.push(token);
        } else {
            chars.next();
            let pair = chars.peek().map(|d| format!("{c}{d}"));
            match pair.filter(|p| OPERATORS.contains(&p.as_str())) {
                Some(pair) => {
                    chars.next();
                    out.push(pair);
                }
                None => out.push(c.to_string()),
            }
        }
    }
    out
}

/// What a token is, for a change that keeps it the same kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Number,
    Quoted,
    Word,
    Mark,
}

impl Kind {
    fn of(token: &str) -> Kind {
        match token.chars().next() {
            Some(c) if c.is_ascii_digit() => Kind::Number,
            Some('\'' | '"') => Kind::Quoted,
            Some(c) if c.is_alphanumeric() || c == '_' => Kind::Word,
            _ => Kind::Mark,
        }
    }
}

/// Numbers and quoted strings a variant may put in place of others.
const NUMBERS: &[&str] = &["0", "1", "2", "1.5", "1e308", "9223372036854775807", "99999999999999999999", "00"];
const QUOTED: &[&str] = &["''", "'x'", "'0'", "'-5'", "'1.5'", "'9223372036854775808'", "'2024-01-01 00:00:00'", "'abc''d'", "\"col\""];

/// `sql` with one random change.
fn mutate(sql: &str, rng: &mut impl Rng) -> String {
    let mut t = tokens(sql);
    if t.is_empty() {
        return sql.to_string();
    }
    let at = rng.random_range(0..t.len());
    // Half the changes keep the token's kind, so that more variants get
    // past the parser to the planner and the pipeline.
    if rng.random_bool(0.5) {
        let kind = Kind::of(&t[at]);
        let same: Vec<String> = match kind {
            Kind::Number => NUMBERS.iter().map(|n| n.to_string()).collect(),
            Kind::Quoted => QUOTED.iter().map(|q| q.to_string()).collect(),
            Kind::Word => t.iter().filter(|w| Kind::of(w) == Kind::Word).cloned().collect(),
            Kind::Mark => OPERATORS.iter().chain(["=", "<", ">", "+", "-", "*", "/", "%"].iter()).map(|m| m.to_string()).collect(),
        };
        t[at] = same[rng.random_range(0..same.len())].clone();
        return t.join(" ");
    }
    match rng.random_range(0..6) {
        0 => {
            t.remove(at);
        }
        1 => {
            let token = t[at].clone();
            t.insert(at, token);
        }
        2 if at + 1 < t.len() => t.swap(at, at + 1),
        3 => t[at] = t[rng.random_range(0..t.len())].clone(),
        4 => t.truncate(at),
        _ => t[at] = REPLACEMENTS[rng.random_range(0..REPLACEMENTS.len())].to_string(),
    }
    t.join(" ")
}

/// Runs one statement to its end (rows, a message or an error), stopping a
/// query that outlives `timeout`; returns whether it was taken (parsed and
/// planned, and, if a query, started).
async fn run(session: &mut Session, sql: &str, timeout: Duration) -> bool {
    let Ok(statements) = session.parse(sql) else { return false };
    for statement in statements {
        let Ok(output) = session.execute(statement).await else { return false };
        match output {
            StatementOutput::Message(_) | StatementOutput::Rows { .. } => {}
            StatementOutput::Query(mut q) => {
                let collect = async {
                    while q.results.recv().await.is_some() {}
                };
                if tokio::time::timeout(timeout, collect).await.is_err() {
                    q.job.cancel();
                }
                let _ = tokio::time::timeout(timeout, q.job.wait()).await;
            }
            StatementOutput::Insert { mut job, .. } | StatementOutput::InsertSet { mut job, .. } => {
                if tokio::time::timeout(timeout, job.wait()).await.is_err() {
                    job.cancel();
                }
            }
        }
    }
    true
}

/// Whether `sql` defines or sets something (as opposed to querying).
fn is_definition(sql: &str) -> bool {
    let first = sql.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
    matches!(first.as_str(), "CREATE" | "DROP" | "SET" | "RESET" | "ALTER" | "USE")
}

/// Copies `from` into `to`, recursively.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("a directory is made");
    for entry in std::fs::read_dir(from).expect("a directory is listed") {
        let path = entry.expect("a directory entry").path();
        let target = to.join(path.file_name().expect("a file name"));
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).expect("a file is copied");
        }
    }
}

#[test]
fn mutated_statements_end_in_rows_or_an_error() {
    let variants: usize = std::env::var("SLUICE_SQL_MUTATIONS").ok().and_then(|n| n.parse().ok()).unwrap_or(1);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The statements read `tests/data/...` and write under `$__TEST_DIR__`:
    // both live in a scratch directory, which becomes the working directory.
    let scratch = tempfile::tempdir().expect("a scratch directory");
    copy_dir(&root.join("tests/data"), &scratch.path().join("tests/data"));
    copy_dir(&root.join("tests/slt"), &scratch.path().join("tests/slt"));
    std::env::set_current_dir(scratch.path()).expect("the scratch directory is entered");

    let panics = Arc::new(Mutex::new(Vec::<String>::new()));
    let current = Arc::new(Mutex::new(String::new()));
    {
        let (panics, current) = (Arc::clone(&panics), Arc::clone(&current));
        std::panic::set_hook(Box::new(move |info| {
            let sql = current.lock().map(|s| s.clone()).unwrap_or_default();
            if let Ok(mut p) = panics.lock() {
                p.push(format!("{info}\n  while running: {sql}"));
            }
        }));
    }

    let mut files = Vec::new();
    common::slt_files(&scratch.path().join("tests/slt"), &mut files).expect("tests/slt is listed");
    files.sort();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let (mut ran, mut taken) = (0usize, 0usize);
    for file in &files {
        let records = sqllogictest::parse_file::<sqllogictest::DefaultColumnType>(file).expect("a golden file parses");
        let test_dir = tempfile::tempdir().expect("a test directory");
        let statements: Vec<String> = records
            .into_iter()
            .filter_map(|r| match r {
                sqllogictest::Record::Statement { sql, .. } | sqllogictest::Record::Query { sql, .. } => Some(sql),
                _ => None,
            })
            .map(|sql| sql.replace("$__TEST_DIR__", &test_dir.path().display().to_string()))
            .collect();
        runtime.block_on(async {
            let mut session = Session::default();
            for sql in &statements {
                for _ in 0..variants {
                    let variant = mutate(sql, &mut rng);
                    if let Ok(mut c) = current.lock() {
                        *c = variant.clone();
                    }
                    // A variant runs in a session of its own that has seen
                    // the file so far, so its DDL does not change the rest.
                    let mut fork = Session::default();
                    for earlier in statements.iter().take_while(|s| *s != sql).filter(|s| is_definition(s)) {
                        let _ = run(&mut fork, earlier, VARIANT_TIMEOUT).await;
                    }
                    if run(&mut fork, &variant, VARIANT_TIMEOUT).await {
                        taken += 1;
                    }
                    ran += 1;
                }
                if let Ok(mut c) = current.lock() {
                    *c = sql.clone();
                }
                let _ = run(&mut session, sql, VARIANT_TIMEOUT).await;
            }
        });
    }
    let _ = std::panic::take_hook();
    let panics = panics.lock().expect("the panics are listed");
    eprintln!("{ran} variants, {taken} of them parsed and planned");
    // Most variants are refused; enough must get past the parser and planner
    // for the run to say something of what lies behind them.
    assert!(ran > 100 && taken * 20 > ran, "{ran} variants, {taken} of them parsed and planned");
    assert!(panics.is_empty(), "{} panics:\n{}", panics.len(), panics.join("\n\n"));
}
