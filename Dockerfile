# syntax=docker/dockerfile:1

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY config ./config
RUN cargo build --release --locked --bin sluice

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home \
        --home-dir /app --shell /usr/sbin/nologin sluice
WORKDIR /app
COPY --from=builder /src/target/release/sluice /usr/local/bin/sluice
COPY --from=builder /src/config /app/config
RUN mkdir -p /app/data && chown sluice:sluice /app/data
ENV SLUICE_LISTEN=0.0.0.0:8080
EXPOSE 8080
USER sluice
ENTRYPOINT ["sluice"]
CMD ["serve"]
