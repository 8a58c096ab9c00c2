#!/usr/bin/env bash
# The all-in-one demo (needs root): builds Damselfly, starts a lab of network-namespace hosts on
# this machine (an origin HTTP server, a scheduler, a seed peer and 3 peers, 100 Mbit/s links),
# downloads one 64 MiB file on all peers at once through the mesh and, for comparison, straight
# from the origin, and prints what the origin sent and how long each took.
# (The registry-mirror demo with containerd hosts comes with the registry proxy.)
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/damselfly-target}
cargo build --release -p damselfly -p damselfly-e2e
out=${DEMO_OUT:-/tmp/damselfly-demo}
"$CARGO_TARGET_DIR/release/damselfly-bench" --hosts 3 --rate 100mbit --size 64MiB --no-single \
  --methods damselfly,direct --damselfly-bin "$CARGO_TARGET_DIR/release/damselfly" \
  --prefix dfdemo --subnet 240 --out "$out"
cat "$out/report.md"
