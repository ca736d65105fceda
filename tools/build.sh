#!/usr/bin/env bash
# Builds the real components the tests run (kube-apiserver, kubectl,
# kube-controller-manager, etcd, minio, helm) from their Go modules, at the
# versions pinned in tools/*/go.mod, into a cache outside the repository:
#   $SLUICE_CACHE/<tool>-<version>/   (SLUICE_CACHE defaults to ~/.cache/sluice)
# A directory that exists is complete (it is renamed into place when built),
# so later runs and other clones reuse it.
#
#   tools/build.sh          build whatever is missing
#   tools/build.sh path     print the directories, colon-separated, for PATH
set -euo pipefail

tools_dir=$(cd "$(dirname "$0")" && pwd)
cache=${SLUICE_CACHE:-$HOME/.cache/sluice}

# The version a tool module pins: the one `require` line of its go.mod.
version_of() {
	awk '$1 == "require" { print $3 }' "$tools_dir/$1/go.mod"
}

dir_of() {
	echo "$cache/$1-$(version_of "$1")"
}

# tool module -> the packages it builds
declare -A packages=(
	[kube]="k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl"
	[etcd]="go.etcd.io/etcd/server/v3"
	[minio]="github.com/minio/minio"
	[helm]="helm.sh/helm/v3/cmd/helm"
)
order=(etcd kube minio helm)

# Kubernetes binaries report their version from ldflags; without them
# /version says v0.0.0 and kubectl warns about version skew.
ldflags_of() {
	local version
	version=$(version_of "$1")
	case $1 in
	kube)
		local major minor pkg flags=""
		major=$(echo "${version#v}" | cut -d. -f1)
		minor=$(echo "${version#v}" | cut -d. -f2)
		for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
			flags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
			flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
		done
		echo "-s -w$flags"
		;;
	helm) echo "-s -w -X helm.sh/helm/v3/internal/version.version=$version" ;;
	*) echo "-s -w" ;;
	esac
}

build() {
	local tool=$1 dest tmp
	dest=$(dir_of "$tool")
	[ -d "$dest" ] && return 0
	echo "building $tool $(version_of "$tool") into $dest (once; later runs reuse it)" >&2
	mkdir -p "$cache"
	tmp=$(mktemp -d "$cache/.build-$tool-XXXXXX")
	trap 'rm -rf "$tmp"' EXIT
	chmod 755 "$tmp"
	# shellcheck disable=SC2086 # the package list is meant to split
	(cd "$tools_dir/$tool" && CGO_ENABLED=0 GOFLAGS=-mod=readonly \
		go build -trimpath -ldflags "$(ldflags_of "$tool")" -o "$tmp/" ${packages[$tool]})
	# etcd's main package is the root of go.etcd.io/etcd/server/v3.
	if [ "$tool" = etcd ]; then mv "$tmp/server" "$tmp/etcd"; fi
	mv -T "$tmp" "$dest" 2>/dev/null || true # on failure another build won the race
	trap - EXIT
	rm -rf "$tmp"
}

case ${1:-build} in
path)
	dirs=()
	for tool in "${order[@]}"; do dirs+=("$(dir_of "$tool")"); done
	(IFS=:; echo "${dirs[*]}")
	;;
build)
	for tool in "${order[@]}"; do build "$tool"; done
	;;
*)
	echo "usage: $0 [build|path]" >&2
	exit 2
	;;
esac
