#!/usr/bin/env bash
# Packages the kubectl plugin for krew: the release binary as kubectl-sluice
# in kubectl-sluice_v<version>_linux_amd64.tar.gz, and krew/sluice.yaml with
# the archive's URL (under RELEASE_URL) and SHA-256 filled in, both into OUT.
#
#   tools/krew.sh RELEASE_URL OUT     (after cargo build --release; or SLUICE_BINARY=PATH)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
url=${1:?usage: tools/krew.sh RELEASE_URL OUT}
out=${2:?usage: tools/krew.sh RELEASE_URL OUT}
version=v$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/Cargo.toml" | head -1)
binary=${SLUICE_BINARY:-${CARGO_TARGET_DIR:-$repo/target}/release/sluice}
archive=kubectl-sluice_${version}_linux_amd64.tar.gz

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
install -m 0755 "$binary" "$stage/kubectl-sluice"
mkdir -p "$out"
# Reproducible: the same binary makes the same archive and checksum.
tar -C "$stage" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cf - kubectl-sluice |
	gzip -n >"$out/$archive"
sha=$(sha256sum "$out/$archive" | cut -d' ' -f1)
sed -e "s|@VERSION@|$version|" -e "s|@URI@|${url%/}/$archive|" -e "s|@SHA256@|$sha|" \
	"$repo/krew/sluice.yaml" >"$out/sluice.yaml"
echo "$out/$archive"
echo "$out/sluice.yaml"
