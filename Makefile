# sluice: `make demo` to see it work, `make test` to check it.
#
# Build products live outside the clone, so CI and later clones reuse them:
#   ~/.cache/sluice/<tool>-<version>/  the control plane, MinIO, helm, helm-docs and the test
#                                      node (kubelet, containerd, runc, CNI, CoreDNS)
#   ~/.cache/sluice/target/            Rust build output (CARGO_TARGET_DIR)
SLUICE_CACHE ?= $(HOME)/.cache/sluice
export SLUICE_CACHE
export CARGO_TARGET_DIR ?= $(SLUICE_CACHE)/target
CARGO ?= cargo
CRD := crds/ingestsources.sluice.dev.yaml
# The Helm chart ships the same file (a copy: helm warns about symlinks).
CHART_CRD := charts/sluice/$(CRD)

.PHONY: all test tools crds chart-docs docs krew lint demo test-env bench chaos fuzz

all: test

## test: build what is missing, then run every test (unit and integration);
## the release binary is the image the test node's pods run
test: tools
	$(CARGO) build --locked --release --workspace --bins
	$(CARGO) test --locked --workspace

## tools: build the pinned real components into $(SLUICE_CACHE) (once)
tools:
	tools/build.sh

## crds: regenerate crds/ (and the chart's copy) from the Rust types
crds:
	$(CARGO) run --locked --quiet -- crd > $(CRD)
	cp $(CRD) $(CHART_CRD)

## chart-docs: regenerate charts/sluice/README.md from the values.yaml comments
chart-docs: tools
	PATH="$$(tools/build.sh path):$$PATH" helm-docs --chart-search-root charts --sort-values-order file

## docs: render docs/architecture.svg from docs/architecture.dot (graphviz)
docs:
	dot -Tsvg docs/architecture.dot -o docs/architecture.svg

## krew: package the kubectl plugin for a release into target/krew: its archive and
## the krew manifest, RELEASE_URL=https://.../download/vX.Y.Z (where the archive goes)
krew:
	$(CARGO) build --locked --release --bin sluice
	tools/krew.sh $(RELEASE_URL) $(CARGO_TARGET_DIR)/krew

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

## demo: all of sluice on this machine: a real single-node Kubernetes, helm install,
## the operator and its pods in containers, three IngestSources ingesting sample
## data, then pods, tasks, history and describe (as root: the node needs it)
demo: tools
	$(CARGO) build --locked --release --workspace --bins
	$(CARGO_TARGET_DIR)/release/sluice-testenv demo

## test-env: start a local API server and MinIO and print how to reach them
test-env: tools
	$(CARGO) run --locked --quiet -p sluice-testenv -- env

## bench: measure every performance bar into BENCHMARKS.md (minutes per group);
## GROUP=operator|status|coordinator|workers|history runs one group
bench: tools
	tools/bench.sh $(GROUP)

## chaos: the long fault-injection run (a few minutes): kill -9 coordinators and
## workers, restart MinIO and kube-apiserver, two coordinators at once, then
## check the sink record by record; SLUICE_CHAOS_SEED=N replays a run,
## SLUICE_CHAOS_ROUNDS=N sets the faults per test (make test runs 8)
SLUICE_CHAOS_ROUNDS ?= 60
chaos: tools
	SLUICE_CHAOS_ROUNDS=$(SLUICE_CHAOS_ROUNDS) $(CARGO) test --locked --test chaos -- --nocapture

## fuzz: run each cargo-fuzz target in fuzz/ for FUZZ_SECONDS (60) each, keeping
## the corpus in fuzz/corpus/ (installs cargo-fuzz into $(SLUICE_CACHE) once)
fuzz:
	tools/fuzz.sh
