"""The history benchmark's DuckDB side: runs `sluice history`'s two queries
on a local copy of the archive and prints, as JSON, each query's median
time and row count.

Usage: python duckdb_history.py SPEC_JSON
  SPEC_JSON: {"dir": ..., "runs": N, "queries": {name: [sql, params]}}

Each run opens a new connection, so nothing but the operating system's
page cache is kept between runs.
"""

import json
import statistics
import sys
import time

import duckdb


def main():
    spec = json.loads(sys.argv[1])
    results = {}
    for name, (sql, params) in spec["queries"].items():
        times, rows = [], None
        for _ in range(spec["runs"]):
            started = time.perf_counter()
            con = duckdb.connect()
            con.execute("SET TimeZone = 'UTC'")
            found = con.execute(sql, params).fetchall()
            times.append(time.perf_counter() - started)
            con.close()
            rows = len(found)
        results[name] = {"ms": statistics.median(times) * 1000, "rows": rows}
    results["version"] = duckdb.__version__
    print(json.dumps(results))


if __name__ == "__main__":
    main()
