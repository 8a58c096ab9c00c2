#!/usr/bin/env bash
# Builds the static damselfly binary (musl) and the `FROM scratch` image `damselfly:dev` with it.
# Usage: scripts/build-image.sh [DOCKER_HOST_ARGS...]  (e.g. -H unix:///run/dfd/docker.sock)
# The binary carries every role but not the lab harness (no `demo` feature).
# PROFILE=release for a release image (slower to build); the default `image` profile is dev code
# generation without debug info, which keeps the test command short.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/damselfly-target}
PROFILE=${PROFILE:-image}
TARGET=x86_64-unknown-linux-musl
rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET"
command -v musl-gcc >/dev/null || { echo "musl-gcc not found: apt-get install musl-tools" >&2; exit 1; }
CC_x86_64_unknown_linux_musl=musl-gcc cargo build --profile "$PROFILE" --target "$TARGET" -p damselfly
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$CARGO_TARGET_DIR/$TARGET/$PROFILE/damselfly" "$ctx/damselfly"
cp deploy/Dockerfile "$ctx/Dockerfile"
cp /etc/ssl/certs/ca-certificates.crt "$ctx/ca-certificates.crt"
docker "$@" build -q -t "${IMAGE:-damselfly:dev}" "$ctx"
