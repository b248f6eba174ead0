# Event Gateway container image.
#   docker build -t event-gateway .
#   docker run --rm -p 8090:8090 event-gateway
# Multi-stage: dependencies are compiled in a layer of their own (rebuilt only when
# Cargo.toml/Cargo.lock change), then the gateway; the runtime image holds the binary and its
# config, runs as a non-root user and exposes only 8090 (gRPC and REST share it).

FROM rust:1.95-bookworm AS build
WORKDIR /src
# librdkafka's bundled build needs a C/C++ toolchain and make, and the vendored OpenSSL
# (Kafka TLS and SASL) perl too, and jemalloc (the binary's allocator) builds from source
# with the same: all in the rust image; no protoc is needed (protox compiles the contract in
# build.rs).
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY docs ./docs
# Dependency layer: a stub crate with the real manifest, built once and cached.
RUN mkdir -p src examples \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && for e in bare_axum raw_producer loadgen; do echo 'fn main() {}' > examples/$e.rs; done \
    && cargo build --release --locked --bin event-gateway \
    && rm -rf src examples
COPY src ./src
COPY examples ./examples
# Touch the sources so cargo rebuilds the crate itself over the stub.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin event-gateway \
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
