#!/usr/bin/env python3
"""Runs the same Flink SQL, DDL included, on Apache Flink (PyFlink) and on Sluice
over the same JSON-lines files, and compares the rows.

    pip install apache-flink==2.3.0   # needs a JDK 17; too heavy for CI
    python3 scripts/flink_parity.py --sluice target/debug/sluice [--rows 3000]

The events are out of order by up to 3 s under a 5 s watermark delay, so no row
is late whenever either engine emits its watermarks; every event time is
distinct, and Top-N orders end in a unique column, so each query has one right
answer. Window TVFs (TUMBLE, HOP, CUMULATE, SESSION with PARTITION BY), window
Top-N over an aggregate and over a TVF, window deduplication (first and last),
GROUPING SETS, ROLLUP and CUBE, window joins (of windowed aggregates and of
TVFs), an interval join, and UNION ALL of two streams. Exits non-zero on any
difference.
"""

import argparse
import datetime
import json
import os
import random
import subprocess
import sys
import tempfile
from collections import Counter

DDL = """
CREATE TABLE clicks (user_id BIGINT, item STRING, price BIGINT, ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)
WITH ('connector' = 'filesystem', 'path' = '{clicks}', 'format' = 'json');
CREATE TABLE web (user_id BIGINT, item STRING, price BIGINT, ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)
WITH ('connector' = 'filesystem', 'path' = '{web}', 'format' = 'json');
CREATE TABLE app (user_id BIGINT, item STRING, price BIGINT, ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)
WITH ('connector' = 'filesystem', 'path' = '{app}', 'format' = 'json');
CREATE VIEW both_apps AS SELECT * FROM web UNION ALL SELECT * FROM app;
"""

QUERIES = {
    "tumble": """
SELECT window_start, window_end, item, count(*) AS n, sum(price) AS total
FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '10' SECOND))
GROUP BY window_start, window_end, item""",
    "hop": """
SELECT window_start, window_end, item, count(*) AS n, max(price) AS top
FROM TABLE(HOP(TABLE clicks, DESCRIPTOR(ts), INTERVAL '5' SECOND, INTERVAL '15' SECOND))
GROUP BY window_start, window_end, item""",
    "cumulate": """
SELECT window_start, window_end, count(*) AS n, sum(price) AS total, min(price) AS low
FROM TABLE(CUMULATE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '5' SECOND, INTERVAL '20' SECOND))
GROUP BY window_start, window_end""",
    "session partition by": """
SELECT window_start, window_end, user_id, count(*) AS n, sum(price) AS total
FROM TABLE(SESSION(TABLE clicks PARTITION BY user_id, DESCRIPTOR(ts), INTERVAL '20' SECOND))
GROUP BY window_start, window_end, user_id""",
    "top-n over an aggregate": """
SELECT * FROM (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY window_start, window_end ORDER BY total DESC, item) AS rn
  FROM (SELECT window_start, window_end, item, sum(price) AS total
        FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '10' SECOND))
        GROUP BY window_start, window_end, item))
WHERE rn <= 3""",
    "top-n over a tvf": """
SELECT * FROM (
  SELECT user_id, item, price, ts, window_start, window_end,
    ROW_NUMBER() OVER (PARTITION BY window_start, window_end ORDER BY price DESC, ts DESC) AS rn
  FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '10' SECOND)))
WHERE rn <= 2""",
    "dedup first": """
SELECT * FROM (
  SELECT user_id, item, ts, window_start, window_end,
    ROW_NUMBER() OVER (PARTITION BY window_start, window_end, user_id ORDER BY ts) AS rn
  FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '30' SECOND)))
WHERE rn = 1""",
    "dedup last": """
SELECT * FROM (
  SELECT user_id, item, ts, window_start, window_end,
    ROW_NUMBER() OVER (PARTITION BY window_start, window_end, user_id ORDER BY ts DESC) AS rn
  FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '30' SECOND)))
WHERE rn = 1""",
    "grouping sets": """
SELECT window_start, window_end, item, count(*) AS n
FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '20' SECOND))
GROUP BY window_start, window_end, GROUPING SETS ((item), ())""",
    "rollup": """
SELECT window_start, window_end, item, user_id, sum(price) AS total
FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '30' SECOND))
GROUP BY window_start, window_end, ROLLUP (item, user_id)""",
    "cube": """
SELECT window_start, window_end, item, user_id, count(*) AS n
FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '30' SECOND))
GROUP BY window_start, window_end, CUBE (item, user_id)""",
    "window join of aggregates": """
SELECT L.window_start, L.window_end, L.user_id, L.n, R.m
FROM (SELECT window_start, window_end, user_id, count(*) AS n
      FROM TABLE(TUMBLE(TABLE web, DESCRIPTOR(ts), INTERVAL '10' SECOND)) GROUP BY window_start, window_end, user_id) L
JOIN (SELECT window_start, window_end, user_id, count(*) AS m
      FROM TABLE(TUMBLE(TABLE app, DESCRIPTOR(ts), INTERVAL '10' SECOND)) GROUP BY window_start, window_end, user_id) R
ON L.window_start = R.window_start AND L.window_end = R.window_end AND L.user_id = R.user_id""",
    "window join of tvfs": """
SELECT L.user_id, L.ts, R.ts AS app_ts, L.window_start, L.window_end
FROM (SELECT * FROM TABLE(TUMBLE(TABLE web, DESCRIPTOR(ts), INTERVAL '10' SECOND))) L
JOIN (SELECT * FROM TABLE(TUMBLE(TABLE app, DESCRIPTOR(ts), INTERVAL '10' SECOND))) R
ON L.window_start = R.window_start AND L.window_end = R.window_end AND L.user_id = R.user_id""",
    "interval join": """
SELECT w.user_id, w.ts, a.ts AS app_ts
FROM web w, app a
WHERE w.user_id = a.user_id AND a.ts BETWEEN w.ts - INTERVAL '5' SECOND AND w.ts""",
    "union all": """
SELECT window_start, window_end, count(*) AS n, sum(price) AS total
FROM TABLE(TUMBLE(TABLE both_apps, DESCRIPTOR(ts), INTERVAL '10' SECOND))
GROUP BY window_start, window_end""",
}

ITEMS = ["apple", "pear", "fig", "kiwi", "plum", "lime", "date", "yuzu"]
BASE = datetime.datetime(2024, 1, 1)


def write_events(path, rows, seed):
    """Events about 0.7 s apart (each in its own 700 ms slot, so every time is
    distinct), written out of order by up to 3 s."""
    rng = random.Random(seed)
    times = [i * 700 + rng.randrange(0, 700) for i in range(rows)]
    times.sort(key=lambda millis: millis + rng.randrange(-1500, 1500))
    with open(path, "w") as f:
        for millis in times:
            ts = BASE + datetime.timedelta(milliseconds=millis)
            f.write(json.dumps({
                "user_id": rng.randrange(1, 25),
                "item": rng.choice(ITEMS),
                "price": rng.randrange(1, 100),
                "ts": ts.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
            }) + "\n")


def late_free(path, delay_ms=5000):
    """Checks that no row is behind the watermark (largest time so far less the delay)."""
    biggest = None
    with open(path) as f:
        for line in f:
            ts = datetime.datetime.fromisoformat(json.loads(line)["ts"])
            if biggest is not None and ts < biggest - datetime.timedelta(milliseconds=delay_ms):
                return False
            biggest = ts if biggest is None else max(biggest, ts)
    return True


def normal(value):
    if isinstance(value, datetime.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    if isinstance(value, str):
        try:
            return normal(datetime.datetime.fromisoformat(value))
        except ValueError:
            return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def flink_rows(ddl, query):
    from pyflink.table import EnvironmentSettings, TableEnvironment
    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    env.get_config().set("parallelism.default", "1")
    for statement in filter(str.strip, ddl.split(";")):
        env.execute_sql(statement)
    rows = []
    with env.execute_sql(query).collect() as results:
        for row in results:
            kind = str(row.get_row_kind())
            if kind not in ("RowKind.INSERT", "+I"):
                raise AssertionError(f"Flink sent a {kind} row: the query is not append-only")
            rows.append(tuple(normal(v) for v in row))
    return rows


def sluice_rows(binary, ddl, query):
    script = ddl + "SET 'parallelism' = '2';\n" + query + ";\n"
    done = subprocess.run([binary, "run", "--format", "ndjson", "-c", script], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise AssertionError(f"sluice failed: {done.stderr.strip()}")
    return [tuple(normal(v) for v in json.loads(line).values()) for line in done.stdout.splitlines() if line.strip()]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sluice", default="target/debug/sluice", help="the sluice binary")
    parser.add_argument("--rows", type=int, default=3000, help="events in the main table")
    parser.add_argument("--only", help="only the queries whose name contains this")
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="sluice-flink-")
    paths = {name: os.path.join(directory, f"{name}.jsonl") for name in ("clicks", "web", "app")}
    write_events(paths["clicks"], args.rows, 1)
    write_events(paths["web"], args.rows // 2, 2)
    write_events(paths["app"], args.rows // 3, 3)
    for path in paths.values():
        if not late_free(path):
            sys.exit(f"{path} has late rows: the comparison would depend on watermark timing")
    ddl = DDL.format(**paths)
    failed = 0
    for name, query in QUERIES.items():
        if args.only and args.only not in name:
            continue
        try:
            flink = Counter(flink_rows(ddl, query))
            sluice = Counter(sluice_rows(args.sluice, ddl, query))
        except Exception as e:  # noqa: BLE001 - reported per query
            print(f"ERROR  {name}: {e}")
            failed += 1
            continue
        if flink == sluice:
            print(f"same   {name}: {sum(flink.values())} rows")
        else:
            failed += 1
            only_flink = list((flink - sluice).elements())[:5]
            only_sluice = list((sluice - flink).elements())[:5]
            print(f"DIFFER {name}: Flink {sum(flink.values())} rows, Sluice {sum(sluice.values())}")
            print(f"  only in Flink: {only_flink}")
            print(f"  only in Sluice: {only_sluice}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
