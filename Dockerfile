FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bins

FROM debian:bookworm-slim
RUN useradd --system opsrun
COPY --from=build /src/target/release/producer /src/target/release/worker /src/target/release/reaper /src/target/release/monitor /usr/local/bin/
USER opsrun
