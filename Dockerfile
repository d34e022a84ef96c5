# oidc-authz container image: a release build on the official Rust image, run on the official Debian slim image.
#
#   docker build -t oidc-authz .
#   docker run --rm -v "$PWD/examples/compose/oidc-authz.toml:/etc/oidc-authz/config.toml:ro" \
#       -p 9191:9191 -p 9192:9192 oidc-authz
#
# The config must listen on 0.0.0.0 (grpc_addr, admin_addr): the built-in defaults are 127.0.0.1, which nothing
# outside the container can reach. `docker run ... oidc-authz check-config --config /etc/oidc-authz/config.toml`
# validates a config with the same binary.

# ---- build ------------------------------------------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src

# Dependencies first, in their own layer: built against a dummy crate, so editing src/ does not rebuild them.
# Only a change to Cargo.toml, Cargo.lock, build.rs or proto/ does. --locked: exactly the committed Cargo.lock, or
# fail. build.rs compiles proto/ (the admin API) in pure Rust: no protoc needed.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && : > src/lib.rs \
 && cargo build --release --locked --bin oidc-authz \
 && rm -rf src target/release/oidc-authz target/release/deps/oidc_authz-* target/release/deps/liboidc_authz-* \
           target/release/.fingerprint/oidc-authz-*

# The real sources. The dummy crate's fingerprints were removed above, so cargo rebuilds the crate whatever the
# timestamps COPY gives the files.
COPY src ./src
RUN cargo build --release --locked --bin oidc-authz \
 && /src/target/release/oidc-authz --version

# ---- runtime ----------------------------------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime

# ca-certificates: the IdP is reached over HTTPS (rustls verifies against the system trust store).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# A fixed non-root uid/gid, so Kubernetes `runAsNonRoot` can verify it and volume permissions can be planned.
RUN groupadd --gid 10001 oidc-authz \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
            --no-log-init oidc-authz

COPY --from=build /src/target/release/oidc-authz /usr/local/bin/oidc-authz

USER 10001:10001
# 9191: ext_authz gRPC (Check) + grpc.health.v1; 9192: admin HTTP (/healthz, /readyz, /metrics)
EXPOSE 9191 9192
ENTRYPOINT ["/usr/local/bin/oidc-authz"]
CMD ["serve", "--config", "/etc/oidc-authz/config.toml"]
