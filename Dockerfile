# The eventbus binary in a slim image, for the dev stack (docker-compose.yml).
#
#   docker build -t eventbus .
#
# Build stage: the release binary (librdkafka is built from source by rdkafka-sys).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p eventbus-jobs --bin eventbus

# Runtime stage: the binary, the schemas and the catalog, a non-root user.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin eventbus
WORKDIR /app
# Commands find schemas/topics.toml in the working folder.
COPY --from=build /src/schemas/topics.toml /src/schemas/registry.toml /app/schemas/
COPY --from=build /src/schemas/*.avsc /app/schemas/
COPY --from=build /src/target/release/eventbus /usr/local/bin/eventbus
USER 10001
ENTRYPOINT ["eventbus"]
CMD ["--help"]
