# syntax=docker/dockerfile:1
# Event Gateway container image.
#   docker build -t event-gateway .
#   docker run --rm -p 8090:8090 event-gateway
# Multi-stage: the build stage compiles with BuildKit cache mounts (the cargo registry and
# target/ outlive the build, so dependencies compile once per builder), the runtime image holds
# the binary and its config, runs as a non-root user and exposes only 8090 (gRPC and REST
# share it). `scripts/test` stages exactly what the build stage copies and has cargo resolve
# it (tests/deploy.rs), since no Docker engine runs in CI.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# librdkafka's bundled build needs a C/C++ toolchain and make, and the vendored OpenSSL
# (Kafka TLS and SASL) perl too, and jemalloc (the binary's allocator) builds from source
# with the same: all in the rust image; no protoc is needed (protox compiles the contract in
# build.rs). Every target Cargo.toml names must be here, benches included, or cargo refuses
# the manifest; docs/ holds the OpenAPI document the binary embeds.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY docs ./docs
COPY src ./src
COPY examples ./examples
COPY benches ./benches
# target/ is a cache mount, so the binary is copied out of it in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin event-gateway \
    && mkdir -p /out/data \
    && cp target/release/event-gateway /out/event-gateway

# distroless/cc: glibc, libgcc and CA certificates, no shell; `nonroot` is uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/event-gateway /usr/local/bin/event-gateway
COPY config.yaml /etc/event-gateway/config.yaml
COPY --from=build --chown=65532:65532 /out/data /var/lib/event-gateway
# Overridable like any key: GATEWAY_KAFKA_BROKERS=kafka:9092, GATEWAY_KAFKA_TOPIC, ...
ENV GATEWAY_STORAGE_DATA_DIR=/var/lib/event-gateway \
    GATEWAY_LOGGING_FORMAT=json
USER 65532:65532
EXPOSE 8090
ENTRYPOINT ["/usr/local/bin/event-gateway", "--config", "/etc/event-gateway/config.yaml"]
