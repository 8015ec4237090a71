# syntax=docker/dockerfile:1
# Recur's image: `recur serve` on 0.0.0.0:8080, built with the Rust toolchain that
# Cargo.toml's rust-version names and run on slim Debian as an unprivileged user.
#
#   docker build -t recur .
#   docker run -d --name recur -p 127.0.0.1:8080:8080 -v recur-data:/var/lib/recur \
#       -e RECUR_ADMIN_KEY --stop-timeout 45 recur
#
# Without DATABASE_URL the ledger is the embedded SQLite file
# /var/lib/recur/recur.sqlite, on the volume. docs/operations.md has the rest.

# Keep in step with rust-version in Cargo.toml; build and run on the same Debian
# release so the binary finds the glibc it was linked against.
ARG RUST_VERSION=1.94
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY . .
# The registry and target caches are BuildKit cache mounts (not layers), so the
# binary is copied out of target/ in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p recur-gateway --bin recur \
    && install -m 0755 target/release/recur /usr/local/bin/recur

FROM debian:${DEBIAN_RELEASE}-slim
# ca-certificates: TLS to Postgres, NATS and providers; curl: the health check.
# Not pinned to versions: Debian replaces them with security updates, and the base
# image's release already fixes what they are.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 recur \
    && useradd --system --uid 10001 --gid recur --home-dir /var/lib/recur \
        --no-create-home --shell /usr/sbin/nologin recur \
    && install -d -o recur -g recur -m 0750 /var/lib/recur
COPY --from=build /usr/local/bin/recur /usr/local/bin/recur
ENV RECUR_DATA_DIR=/var/lib/recur \
    RECUR_LOG_FORMAT=json
WORKDIR /var/lib/recur
VOLUME ["/var/lib/recur"]
# Numeric, so a runtime that requires a non-root user (runAsNonRoot) can check it.
USER 10001:10001
EXPOSE 8080
# /healthz answers while the process serves; /readyz also asks the ledger.
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/healthz"]
# recur drains on SIGTERM: up to --drain-ms (20 s) for requests in flight, then
# as long again for the scheduler and the relay. Docker's default stop timeout is
# 10 s: run with --stop-timeout 45 (compose: stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["recur"]
CMD ["serve", "--listen", "0.0.0.0:8080"]
