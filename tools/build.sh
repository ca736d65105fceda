#!/usr/bin/env bash
# Builds the real components the tests run from their Go modules, at the
# versions pinned in tools/*/go.mod, into a cache outside the repository:
#   $SLUICE_CACHE/<product>-<version>/   (SLUICE_CACHE defaults to ~/.cache/sluice)
# The control plane (etcd, kube-apiserver, kube-controller-manager, kubectl),
# MinIO, helm, helm-docs (the chart's README), promtool (the chart's
# alerting rules) and krew (the plugin's manifest); and the test node: kubelet, kube-scheduler, kube-proxy,
# containerd with ctr and the runc shim, runc, the CNI plugins, CoreDNS and
# the pause binary (from the Kubernetes module's own source). And moto's S3
# server from PyPI (tools/moto/requirements.txt pins it and its
# dependencies), the store that ignores conditional writes; DuckDB with its
# httpfs extension from PyPI (tools/duckdb/requirements.txt) and
# aircompressor from Maven Central (tools/aircompressor/pom.xml), the
# readers the archive must suit. The Debian packages these need are
# installed first (tools/packages.sh).
# A directory that exists is complete (it is renamed into place when built),
# so later runs and other clones reuse it.
#
#   tools/build.sh          build whatever is missing
#   tools/build.sh path     print the directories, colon-separated, for PATH
set -euo pipefail

tools_dir=$(cd "$(dirname "$0")" && pwd)
cache=${SLUICE_CACHE:-$HOME/.cache/sluice}

# product -> the tool module (a folder here) that pins its version
declare -A module=(
	[etcd]=etcd [kube]=kube [kube-node]=kube [minio]=minio [helm]=helm
	[containerd]=containerd [runc]=runc [cni]=cni [coredns]=coredns [pause]=kube
	[moto]=moto [helm-docs]=helm-docs [promtool]=promtool [krew]=krew
	[duckdb]=duckdb [aircompressor]=aircompressor
)
# product -> the packages it builds
declare -A packages=(
	[kube]="k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl"
	[kube-node]="k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-proxy"
	[etcd]="go.etcd.io/etcd/server/v3"
	[minio]="github.com/minio/minio"
	[helm]="helm.sh/helm/v3/cmd/helm"
	[helm-docs]="github.com/norwoodj/helm-docs/cmd/helm-docs"
	[promtool]="github.com/prometheus/prometheus/cmd/promtool"
	[krew]="sigs.k8s.io/krew/cmd/krew sigs.k8s.io/krew/cmd/validate-krew-manifest"
	[containerd]="github.com/containerd/containerd/v2/cmd/containerd github.com/containerd/containerd/v2/cmd/ctr github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	[runc]="github.com/opencontainers/runc"
	[cni]="github.com/containernetworking/plugins/plugins/main/bridge github.com/containernetworking/plugins/plugins/ipam/host-local github.com/containernetworking/plugins/plugins/main/loopback github.com/containernetworking/plugins/plugins/meta/portmap"
	[coredns]="github.com/coredns/coredns"
)
order=(etcd kube minio helm helm-docs promtool krew kube-node containerd runc cni coredns pause moto duckdb aircompressor)

# The version a tool module pins: the one `require` line of its go.mod (or
# for moto and duckdb, their line in requirements.txt; for aircompressor,
# its dependency's version in pom.xml).
version_of() {
	case $1 in
	moto) sed -n 's/^moto\[server\]==//p' "$tools_dir/moto/requirements.txt" ;;
	duckdb) sed -n 's/^duckdb-ext-httpfs==//p' "$tools_dir/duckdb/requirements.txt" ;;
	aircompressor) sed -n 's|^ *<version>\(.*\)</version>|\1|p' "$tools_dir/aircompressor/pom.xml" | tail -1 ;;
	*) awk '$1 == "require" { print $3 }' "$tools_dir/${module[$1]}/go.mod" ;;
	esac
}

dir_of() {
	echo "$cache/$1-$(version_of "$1")"
}

# Binaries report their version from ldflags; without them the Kubernetes
# ones say v0.0.0 (and kubectl warns about version skew).
ldflags_of() {
	local version
	version=$(version_of "$1")
	case $1 in
	kube | kube-node)
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
	containerd) echo "-s -w -X github.com/containerd/containerd/v2/version.Version=$version" ;;
	runc) echo "-s -w -X main.version=${version#v}" ;;
	*) echo "-s -w" ;;
	esac
}

# Writes product $1's binaries into directory $2.
compile() {
	local product=$1 out=$2 cgo=0 tags=""
	local dir=$tools_dir/${module[$product]}
	if [ "$product" = pause ]; then
		# The sandbox every pod starts with: pause.c from the Kubernetes
		# module's source, static, as Kubernetes' own image builds it.
		(cd "$dir" && GOFLAGS=-mod=readonly go mod download k8s.io/kubernetes)
		local src
		src=$(cd "$dir" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c
		gcc -Os -static -DVERSION="$(version_of pause)" -o "$out/pause" "$src"
		strip "$out/pause"
		return
	fi
	case $product in
	moto | duckdb)
		# A virtual environment runs from wherever it is moved to when its
		# python is called by path; moto_server and duckdb-python are that
		# call.
		local run=duckdb-python module=""
		[ "$product" = moto ] && run=moto_server module="-m moto.server "
		/usr/bin/python3 -m venv "$out/venv"
		"$out/venv/bin/pip" install --quiet --no-cache-dir -r "$dir/requirements.txt"
		# shellcheck disable=SC2016 # expanded when the script runs
		printf '#!/bin/sh\nexec "$(dirname "$0")/venv/bin/python" %s"$@"\n' "$module" >"$out/$run"
		chmod 755 "$out/$run"
		return
		;;
	aircompressor)
		mvn -q -B -Dstyle.color=never -f "$dir/pom.xml" dependency:copy-dependencies \
			-Dmdep.stripVersion=true -DoutputDirectory="$out"
		return
		;;
	esac
	# runc needs cgo for its seccomp filter (Debian's libseccomp-dev).
	if [ "$product" = runc ]; then cgo=1 tags=seccomp; fi
	# shellcheck disable=SC2086 # the package list is meant to split
	(cd "$dir" && CGO_ENABLED=$cgo GOFLAGS=-mod=readonly \
		go build -trimpath -tags "$tags" -ldflags "$(ldflags_of "$product")" -o "$out/" ${packages[$product]})
	case $product in
	# etcd's main package is the root of go.etcd.io/etcd/server/v3.
	etcd) mv "$out/server" "$out/etcd" ;;
	esac
}

build() {
	local product=$1 dest tmp
	dest=$(dir_of "$product")
	[ -d "$dest" ] && return 0
	echo "building $product $(version_of "$product") into $dest (once; later runs reuse it)" >&2
	mkdir -p "$cache"
	tmp=$(mktemp -d "$cache/.build-$product-XXXXXX")
	trap 'rm -rf "$tmp"' EXIT
	chmod 755 "$tmp"
	compile "$product" "$tmp"
	mv -T "$tmp" "$dest" 2>/dev/null || true # on failure another build won the race
	trap - EXIT
	rm -rf "$tmp"
}

case ${1:-build} in
path)
	dirs=()
	for product in "${order[@]}"; do dirs+=("$(dir_of "$product")"); done
	(
		IFS=:
		echo "${dirs[*]}"
	)
	;;
build)
	"$tools_dir/packages.sh"
	for product in "${order[@]}"; do build "$product"; done
	;;
*)
	echo "usage: $0 [build|path]" >&2
	exit 2
	;;
esac
