# syntax=docker/dockerfile:1
# MicroStax container image.
#
#   docker build -t microstax:0.1.0 .
#
# The build uses the committed Cargo.lock (`cargo build --release --locked`, the binary only), as
# CI does. By default the binary is profile-guided
# (bench/scripts/pgo-build.sh: an instrumented build serves the side-by-side compare's loads on
# loopback, then the release build uses the counts; it needs CPUs 0 and 1 and wrk, h2load and
# llvm-profdata, installed here). `--build-arg PGO=0` builds without a profile. BuildKit cache
# mounts keep the registry and the target directory between builds, so a source change rebuilds
# only the workspace crates.
FROM rust:1.95-bookworm AS build
ARG PGO=1
RUN if [ "$PGO" = 1 ]; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends wrk nghttp2-client \
        && rm -rf /var/lib/apt/lists/* \
        && rustup component add llvm-tools; \
    fi
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    if [ "$PGO" = 1 ]; then \
        bench/scripts/pgo-build.sh /out/microstax; \
    else \
        cargo build --release --locked --bin microstax \
        && install -D target/release/microstax /out/microstax; \
    fi

# Minimal runtime: glibc and libgcc only, no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/microstax /usr/local/bin/microstax
USER 10001:10001
# 8080: the proxy; 9902: the health listener (/healthz, /readyz, /metrics only). The admin API
# (writes, and reads that show config values) stays on loopback.
EXPOSE 8080 9902
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s \
    CMD ["/usr/local/bin/microstax", "probe", "--addr", "127.0.0.1:9902", "--path", "/healthz"]
ENTRYPOINT ["/usr/local/bin/microstax"]
# Pod-friendly defaults: config from a ConfigMap volume at /etc/microstax; in a fleet, replace
# --config by --source etcd://HOST:PORT/PREFIX (see deploy/kubernetes/).
CMD ["run", "--config", "/etc/microstax", "--listen", "0.0.0.0:8080", "--admin", "127.0.0.1:9901", "--health", "0.0.0.0:9902"]
