#!/usr/bin/env bash
# `make fuzz`: runs every cargo-fuzz target in fuzz/ for FUZZ_SECONDS each
# (default 60), growing the corpus in fuzz/corpus/<target>/. The repository
# keeps only the seeds there (seed-*); what fuzzing adds stays local
# (fuzz/.gitignore), so later runs here start from it.
#
#   FUZZ_SECONDS=300 make fuzz          # longer
#   FUZZ_TARGETS="decode_json http" make fuzz  # some targets only
#   FUZZ_SANITIZER=address make fuzz    # with the address sanitizer (a build of its own)
#
# cargo-fuzz needs unstable compiler flags, and a new machine may have no
# nightly toolchain (nothing outside package registries can be downloaded),
# so the stable toolchain runs with RUSTC_BOOTSTRAP=1. The address
# sanitizer works that way too (stable's rust-std ships its runtime; checked
# with a planted heap overflow), but the default is `none`: the targets are
# safe Rust, the C underneath (zstd) is built by cc without the sanitizer
# anyway, ASan halves the speed and needs a second full build, and what is
# looked for is panics, 5xx answers, hangs and runaway memory (libFuzzer's
# -rss_limit_mb).
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
SLUICE_CACHE=${SLUICE_CACHE:-$HOME/.cache/sluice}
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
FUZZ_SANITIZER=${FUZZ_SANITIZER:-none}
# Each target's own build products, apart from the main crate's.
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$SLUICE_CACHE/target-fuzz}

root=$SLUICE_CACHE/cargo-fuzz-$CARGO_FUZZ_VERSION
if [[ ! -x $root/bin/cargo-fuzz ]]; then
    echo "installing cargo-fuzz $CARGO_FUZZ_VERSION into $root" >&2
    # Its own target dir: a shared one would leave its objects beside ours.
    CARGO_TARGET_DIR=$root/build cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" \
        --locked --root "$root"
    rm -rf "$root/build"
fi
export PATH=$root/bin:$PATH

# The same toolchain as everything else, with its unstable flags unlocked
# (FUZZ_TOOLCHAIN=nightly picks another rustup toolchain).
toolchain=()
if [[ -n ${FUZZ_TOOLCHAIN:-} ]]; then
    toolchain=("+$FUZZ_TOOLCHAIN")
else
    export RUSTC_BOOTSTRAP=1
fi

targets=${FUZZ_TARGETS:-$(cargo "${toolchain[@]}" fuzz list)}
status=0
for target in $targets; do
    corpus=fuzz/corpus/$target
    mkdir -p "$corpus"
    echo "== $target: ${FUZZ_SECONDS}s" >&2
    # New inputs go to a scratch directory, and only those that add coverage
    # are merged into the kept corpus, so it stays small.
    scratch=$(mktemp -d)
    if ! cargo "${toolchain[@]}" fuzz run --sanitizer "$FUZZ_SANITIZER" --release \
        "$target" "$scratch" "$corpus" -- \
        -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1; then
        echo "== $target: FAILED; the input is in fuzz/artifacts/$target/" >&2
        status=1
    fi
    cargo "${toolchain[@]}" fuzz run --sanitizer "$FUZZ_SANITIZER" --release \
        "$target" "$corpus" "$scratch" -- -merge=1 >/dev/null 2>&1 || true
    rm -rf "$scratch"
done
exit $status
