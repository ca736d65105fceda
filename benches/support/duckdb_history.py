"""The history benchmark's DuckDB side: runs `sluice history`'s two queries
on the archive in MinIO (with httpfs, connected as tools/duckdb/query.py
connects) and prints, as JSON, each query's median time and row count.

Usage: duckdb-python duckdb_history.py SPEC_JSON
  SPEC_JSON: {"runs": N, "queries": {name: [sql, params]}}

Each run opens a new connection, so nothing is kept between runs; the
connection's set-up (loading httpfs, the S3 secret) is not timed.
"""

import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../tools/duckdb"))
import duckdb  # noqa: E402
from query import connect  # noqa: E402


def main():
    spec = json.loads(sys.argv[1])
    results = {}
    for name, (sql, params) in spec["queries"].items():
        times, rows = [], None
        for _ in range(spec["runs"]):
            con = connect()
            started = time.perf_counter()
            found = con.execute(sql, params).fetchall()
            times.append(time.perf_counter() - started)
            con.close()
            rows = len(found)
        results[name] = {"ms": statistics.median(times) * 1000, "rows": rows}
    results["version"] = duckdb.__version__
    print(json.dumps(results))


if __name__ == "__main__":
    main()
