# The single roomkeeper image: one binary for `operator`, `node`, `drill`, ...
# (the chart's Deployment and the operator's node pods run `roomkeeper` from
# PATH). For machines without Docker, `bash scripts/image.sh` assembles the
# same contents from the release binary and Debian packages, and
# tests/tests/image.rs runs that image with runc (docs/install.md).
#
#   docker build -t ghcr.io/roomkeeper/roomkeeper:0.1.0 .

# Build stage: the workspace's pinned dependencies (Cargo.lock), release
# profile, without the optional bench feature (it needs protoc).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p roomkeeper \
 && install -D -m 0755 target/release/roomkeeper /out/roomkeeper

# Runtime: distroless (glibc, CA certificates, no shell, no package manager),
# running as the non-root user 65532 the chart's securityContext expects.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/roomkeeper /usr/local/bin/roomkeeper
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/roomkeeper"]
