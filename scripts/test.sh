#!/usr/bin/env bash
# The whole test suite: installs dependencies, checks formatting and lints, runs every test
# (unit tests and the end-to-end tests in network namespaces, which need root).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/root.sh
# Each step says how long it took (seconds since the start), so a slow CI run shows where.
step() { echo "test.sh: [$((SECONDS / 60))m$((SECONDS % 60))s] $*"; }
step install-deps
./scripts/install-deps.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/damselfly-target}
step fmt, clippy
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy -p damselfly --all-targets --features demo,fault-injection -- -D warnings
# The e2e tests drive the real binary, built with the test-only fault switches.
step build
cargo build --features fault-injection,demo -p damselfly
# A copy: `cargo test --workspace` rebuilds target/debug/damselfly without these features.
cp "$CARGO_TARGET_DIR/debug/damselfly" "$CARGO_TARGET_DIR/damselfly-lab"
export DAMSELFLY_BIN="$CARGO_TARGET_DIR/damselfly-lab"
# deploy/: alert rules, systemd units, the static binary and image, the Compose stack, the Helm chart.
step test-deploy
./scripts/test-deploy.sh
# containerd's snapshotter suite against `damselfly snapshotter` (21 tests, about 25 s).
step snapshotter-suite
./scripts/snapshotter-suite.sh
# The fuzz targets (fuzz/), a few seconds each: decoders of what hosts send each other.
step fuzz
./scripts/fuzz.sh 5
export DAMSELFLY_SMOKE_METHODS=damselfly,direct,bittorrent
# Tests that need lab programs fail instead of skipping when one is missing.
export DAMSELFLY_REQUIRE_LAB=1
step cargo test
cargo test --workspace --no-fail-fast
step done
