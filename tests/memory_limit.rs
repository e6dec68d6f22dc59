//! `SET 'sluice.memory.limit'` fails a query whose state outgrows it, with a
//! message that says what to do, instead of letting it take the machine.

use std::process::Command;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

#[test]
fn an_unbounded_group_by_over_its_memory_limit_fails_with_a_clear_message() -> TestResult {
    // One group per event (ts is unique): nothing bounds the state, and it
    // grows by every row. The generator is unbounded: only the limit ends it.
    let sql = "CREATE TABLE clicks (user_id BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts) \
               WITH (connector = 'generator'); \
               SET 'sluice.memory.limit' = '4 MB'; \
               SELECT ts, count(*) AS n FROM clicks GROUP BY ts;";
    let out = Command::new(SLUICE).args(["run", "-c", sql]).output()?;
    let stderr = String::from_utf8(out.stderr)?;
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("over its limit of 4.0 MB ('sluice.memory.limit')"), "{stderr}");
    assert!(stderr.contains("table.exec.state.ttl"), "the message says how to bound the state: {stderr}");
    // The query was warned about as it started.
    assert!(stderr.to_lowercase().contains("unbounded") || stderr.contains("nothing bounds"), "{stderr}");
    Ok(())
}
