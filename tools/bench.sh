#!/usr/bin/env bash
# `make bench [GROUP=name]`: runs the benchmark groups (all, or the one
# named) and puts each group's section into BENCHMARKS.md, between its
# markers, with the machine and the date. Each group is a `cargo bench`
# target in benches/ that prints its section (Markdown) on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

all=(operator status coordinator workers history)
if [ $# -gt 0 ] && [ -n "$1" ]; then groups=("$@"); else groups=("${all[@]}"); fi

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)
memory=$(free -g | awk '/^Mem:/ { print $2 }')
machine="$(nproc) cores ($cpu), $memory GiB"

for group in "${groups[@]}"; do
  case " ${all[*]} " in
    *" $group "*) ;;
    *) echo "no benchmark group '$group'; the groups are: ${all[*]}" >&2; exit 2 ;;
  esac
  section=$(mktemp)
  echo "== make bench GROUP=$group" >&2
  # What the group compares against (rclone, DuckDB), installed if missing.
  eval "$(tools/bench-tools.sh "$group")"
  # The load when the group starts: the tables claim a machine with
  # nothing else running, and this is the figure behind the claim.
  load=$(cut -d' ' -f1 /proc/loadavg)
  cargo bench --locked --bench "$group" > "$section"
  SECTION="$section" GROUP="$group" MACHINE="$machine" LOAD="$load" DATE="$(date -u +%Y-%m-%d)" python3 - <<'PY'
import os, re
group, path = os.environ["GROUP"], "BENCHMARKS.md"
body = open(os.environ["SECTION"]).read().strip()
stamp = (f"_Measured {os.environ['DATE']} on {os.environ['MACHINE']}, "
         f"with nothing else running (load average {os.environ['LOAD']} as it started), "
         f"by `make bench GROUP={group}` (`cargo bench --bench {group}`)._")
block = f"<!-- bench:{group} -->\n{stamp}\n\n{body}\n<!-- /bench:{group} -->"
text = open(path).read()
pattern = re.compile(rf"<!-- bench:{group} -->.*?<!-- /bench:{group} -->", re.S)
if not pattern.search(text):
    raise SystemExit(f"BENCHMARKS.md has no markers for group {group}")
open(path, "w").write(pattern.sub(lambda _: block, text))
PY
  rm -f "$section"
done
