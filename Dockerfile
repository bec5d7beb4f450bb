FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bins

FROM debian:bookworm-slim
# opsrun runs the services; opsrun-job runs exec jobs (registry run_as), so
# a job cannot read the services' secret files or memory.
RUN apt-get update && apt-get install -y --no-install-recommends libcap2-bin \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group opsrun \
 && useradd --system --uid 10002 --user-group --create-home opsrun-job
COPY --from=build /src/target/release/producer /src/target/release/worker /src/target/release/reaper /src/target/release/monitor /usr/local/bin/
# The worker starts jobs as opsrun-job and stops their process groups
# without being root: only these three capabilities, only for this binary.
RUN setcap cap_setuid,cap_setgid,cap_kill=ep /usr/local/bin/worker
COPY registry.toml /etc/opsrun/registry.toml
USER opsrun
