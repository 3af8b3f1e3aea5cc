# medinfer serve in a container: build stage (Rust + the native runtimes fetched from PyPI
# wheels by `medinfer runtimes install`), then a slim runtime stage with the binary and the
# runtimes only. Build: docker build -t medinfer:latest .
# Run: docker run -p 8000:8000 -v $PWD/repo:/models medinfer:latest
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ENV MEDINFER_HOME=/opt/medinfer
RUN cargo build --release -p medinfer-cli \
    && target/release/medinfer runtimes install \
    && target/release/medinfer runtimes \
    && rm -rf /opt/medinfer/runtimes/wheels

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 medinfer
COPY --from=build /src/target/release/medinfer /usr/local/bin/medinfer
COPY --from=build /opt/medinfer /opt/medinfer
ENV MEDINFER_HOME=/opt/medinfer
USER 10001
EXPOSE 8000
# The model repository is mounted at /models (a volume, or KServe's storage initializer).
ENTRYPOINT ["medinfer", "serve", "--models", "/models", "--host", "0.0.0.0", "--port", "8000"]
