#!/usr/bin/env bash
# Installs what a benchmark group compares sluice against, only when it is
# missing, and prints the environment the benchmark reads (for `eval`):
#   workers  needs rclone (Debian's package)
#   history  needs DuckDB's Python package, pinned, in a venv under
#            $SLUICE_CACHE/duckdb-<version>
set -euo pipefail

DUCKDB_VERSION=1.5.6
SLUICE_CACHE=${SLUICE_CACHE:-$HOME/.cache/sluice}

case "${1:-}" in
  workers)
    "$(dirname "$0")/packages.sh" rclone
    echo "export SLUICE_BENCH_RCLONE=$(command -v rclone)"
    ;;
  history)
    venv="$SLUICE_CACHE/duckdb-$DUCKDB_VERSION"
    if ! "$venv/bin/python" -c 'import duckdb' 2>/dev/null; then
      echo "installing duckdb==$DUCKDB_VERSION into $venv (pip)" >&2
      rm -rf "$venv"
      python3 -m venv "$venv" >&2
      "$venv/bin/pip" install --quiet "duckdb==$DUCKDB_VERSION" >&2
    fi
    echo "export SLUICE_BENCH_DUCKDB_PYTHON=$venv/bin/python"
    ;;
esac
