#!/usr/bin/env python3
"""Sluice streaming against DuckDB batch on one core, over one JSON-lines file.

Issue #16 asks for windowed queries measured "on one core, from the same
~2-million-event JSON-lines file, against DuckDB batch on one thread, JSON
reading included on both sides". Two more queries, scans that return no rows
(needing one column, then every column), show what reading the JSON alone costs
each engine. This script runs that comparison side by side
in one run, because the development machine's speed varies by up to 45 %
between runs:

    CARGO_TARGET_DIR=/work/rtarget cargo build --release -p sluice-benches
    python3 benches/windows_vs_duckdb.py --bin /work/rtarget/release/sluice-bench \\
        --events 2000000 --repeat 3

It writes the clickstream events as JSON lines (`sluice-bench --write-json`)
unless the file exists, then, `--repeat` rounds, runs `sluice-bench --json FILE`
under `taskset -c CPU` (Sluice streaming with one lane, Sluice batch mode and
plain DataFusion with one partition; see benches/src/json_vs_batch.rs) and the
same three queries in DuckDB with `SET threads = 1`, this process pinned to the
same CPU. It prints the median seconds of each engine, Sluice's ratio to DuckDB
against the issue's target (tumble within 1.2x, hop and session within 1.5x),
Sluice's events per second and the result rows, and fails if the engines'
rows differ (compared by the checksum json_vs_batch.rs defines).

Needs the `duckdb` Python package (tested with 2.0.1).
"""

import argparse
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import time

import duckdb

# The file's columns as the other engines declare them.
COLUMNS = (
    "{'user_id': 'BIGINT', 'session_id': 'BIGINT', 'event_type': 'VARCHAR', 'page': 'VARCHAR', "
    "'item_id': 'BIGINT', 'price': 'DOUBLE', 'ts': 'TIMESTAMP'}"
)

# DuckDB's form of each query, columns in the order Sluice returns them. The
# session query numbers each user's sessions with lag and a running sum, as
# Sluice's batch rewrite of SESSION does (sql/src/window_tvf.rs).
DUCKDB_QUERIES = {
    "tumble": """
        SELECT time_bucket(INTERVAL 1 MINUTE, ts) AS window_start, event_type, count(*)
        FROM clicks GROUP BY window_start, event_type""",
    "hop": """
        SELECT window_start, event_type, count(*) FROM
          (SELECT event_type, unnest(generate_series(
              time_bucket(INTERVAL 1 MINUTE, ts) - INTERVAL 4 MINUTE,
              time_bucket(INTERVAL 1 MINUTE, ts), INTERVAL 1 MINUTE)) AS window_start
           FROM clicks)
        GROUP BY window_start, event_type""",
    "session": """
        SELECT user_id, min(ts) AS window_start, max(ts) + INTERVAL 30 MINUTE AS window_end, count(*), sum(price) FROM
          (SELECT *, sum(starts) OVER (PARTITION BY user_id ORDER BY ts ROWS UNBOUNDED PRECEDING) AS session FROM
            (SELECT user_id, ts, price,
                CASE WHEN ts <= lag(ts) OVER (PARTITION BY user_id ORDER BY ts) + INTERVAL 30 MINUTE THEN 0 ELSE 1 END AS starts
             FROM clicks))
        GROUP BY user_id, session""",
    # Reading alone: every row decoded, none returned; one column, then all.
    "scan": "SELECT user_id FROM clicks WHERE user_id < 0",
    "scan-all": "SELECT * FROM clicks WHERE user_id < 0",
}

# The targets: Sluice's time over DuckDB's at most this.
TARGETS = {"tumble": 1.2, "hop": 1.5, "session": 1.5, "scan": None, "scan-all": None}

ENGINES = ["sluice", "sluice-batch", "datafusion", "duckdb"]

EPOCH = datetime.datetime(1970, 1, 1)
MASK = (1 << 64) - 1


def fnv1a(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & MASK
    return h


def canonical(value) -> str:
    """A value as json_vs_batch.rs's checksum writes it."""
    if value is None:
        return "NULL"
    if isinstance(value, datetime.datetime):
        return str((value - EPOCH) // datetime.timedelta(milliseconds=1))
    if isinstance(value, float):
        # Rust's f64::round: halves away from zero.
        cents = value * 100.0
        return str(int(math.copysign(math.floor(abs(cents) + 0.5), cents)))
    return str(value)


def checksum(rows) -> str:
    total = 0
    for row in rows:
        total = (total + fnv1a("|".join(canonical(v) for v in row).encode())) & MASK
    return f"{total:016x}"


def run_duckdb(path: str, keys):
    """One run of each query in DuckDB on one thread: (key, seconds, rows, checksum)."""
    con = duckdb.connect()
    con.execute("SET threads = 1")
    quoted = path.replace("'", "''")
    con.execute(
        f"CREATE VIEW clicks AS SELECT * FROM read_json('{quoted}', format = 'newline_delimited', columns = {COLUMNS})"
    )
    results = []
    for key in keys:
        started = time.perf_counter()
        rows = con.execute(DUCKDB_QUERIES[key]).fetchall()
        seconds = time.perf_counter() - started
        results.append((key, seconds, len(rows), checksum(rows)))
    con.close()
    return results


def run_sluice(binary: str, path: str, cpu: int, only):
    """One round of `sluice-bench --json` on one CPU: its JSON lines."""
    command = ["taskset", "-c", str(cpu), binary, "--json", path, "--repeat", "1"]
    if only:
        command += ["--only", only]
    # Its own table of medians (stderr) is left out; its errors are shown.
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin", default="target/release/sluice-bench", help="the sluice-bench binary (a release build)")
    parser.add_argument("--events", type=int, default=2_000_000, help="events to write when the file is absent")
    parser.add_argument("--file", help="the JSON-lines file (default /tmp/sluice-clicks-EVENTS.json)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the medians are reported")
    parser.add_argument("--cpu", type=int, default=0, help="the one CPU everything runs on")
    parser.add_argument("--only", choices=sorted(DUCKDB_QUERIES), help="run one query")
    args = parser.parse_args()
    path = os.path.abspath(args.file or f"/tmp/sluice-clicks-{args.events}.json")

    if not os.path.exists(path):
        subprocess.run([args.bin, "--write-json", path, "--events", str(args.events)], check=True)
    os.sched_setaffinity(0, {args.cpu})

    keys = [args.only] if args.only else list(DUCKDB_QUERIES)
    seconds = {}  # (key, engine) -> [seconds]
    outcome = {}  # (key, engine) -> (rows, checksum)
    names, events = {}, None
    for round_ in range(args.repeat):
        for run in run_sluice(args.bin, path, args.cpu, args.only):
            key, engine = run["query"], run["engine"]
            names[key], events = run["name"], run["events"]
            seconds.setdefault((key, engine), []).append(run["seconds"])
            outcome[(key, engine)] = (run["rows"], run["checksum"])
        for key, secs, rows, sums in run_duckdb(path, keys):
            seconds.setdefault((key, "duckdb"), []).append(secs)
            outcome[(key, "duckdb")] = (rows, sums)
        print(f"round {round_ + 1}/{args.repeat} done", file=sys.stderr)

    print(f"{events} events from {path}, one CPU ({args.cpu}), median of {args.repeat} runs\n")
    print(
        "| query | Sluice s | Sluice batch s | DataFusion s | DuckDB s | Sluice / DuckDB | target | met "
        "| Sluice events/s | rows | rows agree |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    disagree = []
    for key in keys:
        median = {e: statistics.median(seconds[(key, e)]) for e in ENGINES}
        ratio = median["sluice"] / median["duckdb"]
        target = TARGETS[key]
        met = "-" if target is None else ("yes" if ratio <= target else "no")
        rows, _ = outcome[(key, "sluice")]
        agree = len({outcome[(key, e)] for e in ENGINES}) == 1
        if not agree:
            disagree.append(key)
        print(
            f"| {names[key]} | {median['sluice']:.2f} | {median['sluice-batch']:.2f} | {median['datafusion']:.2f} "
            f"| {median['duckdb']:.2f} | {ratio:.2f} | {target or '-'} | {met} "
            f"| {events / median['sluice']:.0f} | {rows} | {'yes' if agree else 'NO'} |"
        )
    for key in disagree:
        print(f"{key}: the engines' rows differ: {[(e, outcome[(key, e)]) for e in ENGINES]}", file=sys.stderr)
    print("\nper run (seconds):", file=sys.stderr)
    for key in keys:
        runs = ", ".join(f"{e} {' '.join(f'{s:.2f}' for s in seconds[(key, e)])}" for e in ENGINES)
        print(f"  {key}: {runs}", file=sys.stderr)
    return 1 if disagree else 0


if __name__ == "__main__":
    sys.exit(main())
