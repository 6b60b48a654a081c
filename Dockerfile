# syntax=docker/dockerfile:1

FROM rust:1.95-bookworm AS builder
# rdkafka-sys compiles librdkafka (ssl, zstd) with ./configure + make.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential pkg-config libssl-dev zlib1g-dev python3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /build

# Build dependencies against stub lib + bin targets so this layer survives source edits.
# The stubs' fingerprints go too: COPY keeps source mtimes, which can look older than
# the stub build and leave the stub binary in place.
COPY Cargo.toml Cargo.lock ./
# Every [[bench]] of Cargo.toml needs a file for the manifest to load.
RUN mkdir src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && for bench in $(sed -n '/^\[\[bench\]\]/{n;s/^name = "\(.*\)"/\1/p}' Cargo.toml); do \
      echo 'fn main() {}' > "benches/$bench.rs"; \
    done \
 && cargo build --release --locked \
 && rm -rf src target/release/.fingerprint/eventd-*

COPY src ./src
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 eventd \
 && useradd --system --uid 10001 --gid eventd --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin eventd
COPY --from=builder /build/target/release/eventd /usr/local/bin/eventd
COPY config/eventd.toml /etc/eventd/eventd.toml
# Numeric, so Kubernetes runAsNonRoot can verify it.
USER 10001:10001
# metrics.listen defaults to 127.0.0.1; set EVENTD__METRICS__LISTEN=0.0.0.0:9464 to publish it.
EXPOSE 9464
# eventd drains within shutdown.grace (25s) but `docker stop` kills after 10s: use -t 30.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/eventd"]
CMD ["run", "--config", "/etc/eventd/eventd.toml"]
