#!/usr/bin/env bash
# Installs the Debian packages that are missing, from the list below or the
# names given (tools/bench-tools.sh asks for rclone this way):
#   gcc, libseccomp-dev  build runc with its seccomp filter, and pause
#   iproute2, nftables   the test node's veth and its traffic guard
#   iptables             kubelet's host rules (its iptables-nft chains)
#   ca-certificates      the certificates the sluice image carries
#   python3-venv         moto's S3 server and DuckDB, in virtual environments
#   graphviz             docs/architecture.svg from docs/architecture.dot
#   openjdk-17-jdk-headless, maven
#                        aircompressor from Maven Central, and the Java
#                        program that reads the archive with it
set -euo pipefail

wanted=("$@")
[ ${#wanted[@]} -gt 0 ] || wanted=(gcc libseccomp-dev iproute2 nftables iptables ca-certificates python3-venv graphviz openjdk-17-jdk-headless maven)

missing=()
for package in "${wanted[@]}"; do
	dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q '^install ok installed$' ||
		missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

as_root() {
	if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}
echo "installing ${missing[*]} (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
as_root apt-get install -q -y --no-install-recommends "${missing[@]}" >&2 ||
	{ as_root apt-get update -q >&2 && as_root apt-get install -q -y --no-install-recommends "${missing[@]}" >&2; }
