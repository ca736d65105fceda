"""How the tests (the archive read by DuckDB) and the benchmarks (DuckDB as
the peer) run DuckDB against MinIO.

Runs SQL read from standard input in DuckDB (`connect()`: in UTC, with the
httpfs extension loaded from the pip package beside it and an S3 secret
for the endpoint in SLUICE_S3_ENDPOINT, host:port over plain HTTP, with the
credentials in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY); prints the
last statement's rows as NDJSON, values as DuckDB gives them (dates and
times as text).

    duckdb-python tools/duckdb/query.py < query.sql
"""

import json
import os
import sys

import duckdb
import duckdb_ext


def connect():
    """A new connection that reads and writes s3:// URLs on the endpoint."""
    extensions = os.path.join(list(duckdb_ext.__path__)[0], "extensions")
    con = duckdb.connect(config={"extension_directory": extensions, "TimeZone": "UTC"})
    con.execute("LOAD httpfs")
    con.execute(
        "CREATE SECRET (TYPE s3, KEY_ID $key, SECRET $secret, ENDPOINT $endpoint,"
        " URL_STYLE 'path', USE_SSL false, REGION 'us-east-1')",
        {
            "key": os.environ["AWS_ACCESS_KEY_ID"],
            "secret": os.environ["AWS_SECRET_ACCESS_KEY"],
            "endpoint": os.environ["SLUICE_S3_ENDPOINT"],
        },
    )
    return con


def main():
    con = connect()
    statements = [s for s in sys.stdin.read().split(";") if s.strip()]
    for statement in statements[:-1]:
        con.execute(statement)
    result = con.execute(statements[-1])
    columns = [column[0] for column in result.description]
    for row in result.fetchall():
        print(json.dumps(dict(zip(columns, row)), default=str))


if __name__ == "__main__":
    main()
