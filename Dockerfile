# MicroStax container image. The build step is the one CI checks: `cargo build --locked`
# against the committed Cargo.lock, here in release mode for the binary only.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin microstax

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home microstax
COPY --from=build /src/target/release/microstax /usr/local/bin/microstax
USER 10001
# proxy listener; the admin API stays on loopback unless --admin says otherwise
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/microstax"]
CMD ["run", "--config", "/etc/microstax", "--listen", "0.0.0.0:8080", "--admin", "127.0.0.1:9901"]
