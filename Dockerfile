# syntax=docker/dockerfile:1
#
# The sluice image: one binary for the operator, the coordinator and the
# workers (the chart runs `sluice operator`; the operator's pods run
# `sluice coordinator` and `sluice worker` as arguments to this entrypoint).
#
#   docker build -t REGISTRY/sluice:0.1.0 .
#   docker push REGISTRY/sluice:0.1.0
#   helm install sluice charts/sluice --set image.repository=REGISTRY/sluice
#
# The tag the chart uses by default is its appVersion, the version in
# Cargo.toml.

# Build: the Rust toolchain the project is developed with (at least the
# crate's rust-version). A C compiler builds aws-lc and zstd; no cmake needed.
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin sluice \
    && cp target/release/sluice /sluice

# Run: distroless with glibc and libgcc (the binary links them, like the
# Debian bookworm it was built on), no shell, no package manager. 65532 is
# distroless' `nonroot`, the uid the chart and the operator's pods run as.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /sluice /usr/local/bin/sluice
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/sluice"]
