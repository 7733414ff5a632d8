# syntax=docker/dockerfile:1
# Multi-stage build of `etl`. The dependency layer is built from Cargo.toml and Cargo.lock alone,
# so editing src/ rebuilds only the project itself.

FROM rust:1-bookworm AS builder
WORKDIR /build
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src migrations \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src target/release/deps/etl-* target/release/deps/libetl-* target/release/.fingerprint/etl-*
COPY migrations ./migrations
COPY src ./src
RUN cargo build --release --locked && strip target/release/etl

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin etl
COPY --from=builder /build/target/release/etl /usr/local/bin/etl
# For `sqlx migrate run` users; `etl migrate` has the migrations built in.
COPY migrations /usr/share/etl/migrations
USER etl
# Inside a container the operations endpoint must listen beyond loopback to be probed.
ENV ETL_METRICS_ADDR=0.0.0.0:9898 \
    ETL_LOG_FORMAT=json
EXPOSE 9898
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD curl -fsS http://127.0.0.1:9898/healthz || exit 1
ENTRYPOINT ["etl"]
CMD ["ingest"]
