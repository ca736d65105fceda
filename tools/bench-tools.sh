#!/usr/bin/env bash
# Installs what a benchmark group compares sluice against, only when it is
# missing, and prints the environment the benchmark reads (for `eval`):
#   workers  needs rclone (Debian's package)
# (DuckDB, the workers' and history's peer, is one of tools/build.sh's.)
set -euo pipefail

case "${1:-}" in
  workers)
    "$(dirname "$0")/packages.sh" rclone
    echo "export SLUICE_BENCH_RCLONE=$(command -v rclone)"
    ;;
esac
