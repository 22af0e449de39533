# Small non-root image of audit-transfer. Build: docker build -t audit-transfer .
# With the revision in --version: docker build --build-arg GIT_REV=$(git rev-parse --short HEAD) -t audit-transfer .
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
ARG GIT_REV=
# librdkafka (the Kafka sink) is built from source with make, against the system OpenSSL; the
# runtime image has libssl3.
RUN apt-get update && apt-get install -y --no-install-recommends make pkg-config libssl-dev \
    && rm -rf /var/lib/apt/lists/*
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY migrations ./migrations
# Cargo.toml declares the benchmark target; cargo refuses a manifest whose target file is missing.
COPY benches ./benches
RUN AUDIT_TRANSFER_GIT_REV="$GIT_REV" cargo build --release --locked && strip target/release/audit-transfer

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/audit-transfer /usr/local/bin/audit-transfer
USER nonroot:nonroot
WORKDIR /home/nonroot
ENTRYPOINT ["/usr/local/bin/audit-transfer"]
CMD ["run"]
