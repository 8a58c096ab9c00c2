#!/usr/bin/env bash
# The all-in-one demo (needs root): builds Damselfly and runs `damselfly demo`, which installs the
# Debian packages it lacks, then builds a lab of network-namespace hosts on this machine (a CNCF
# registry with a generated test image, a scheduler, a seed peer and three peer hosts, each with its
# own containerd, 100 Mbit/s links), pulls the image on all three at once through the mesh, runs it,
# prints what the registry sent and where each peer's bytes came from, and removes everything (also
# on Ctrl-C). Extra arguments go to `damselfly demo` (`--help` lists them).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/root.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/damselfly-target}
cargo build --release -p damselfly --features demo
exec "$CARGO_TARGET_DIR/release/damselfly" demo "$@"
