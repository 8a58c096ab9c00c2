#!/usr/bin/env bash
# Fuzzes what hosts decode from the network, each target for a bounded time (cargo-fuzz,
# libFuzzer, nightly toolchain; targets in fuzz/fuzz_targets):
#   frame        the piece protocol's frame decoder (peer/src/wire.rs)
#   layout       layout, piece index and bitmap checks (proto/src/layout.rs)
#   proxy_route  the registry proxy's route, Range, digest and image reference parsing
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET (60)] [TARGET...]
# A crash stops the run (exit 1) and leaves its input in fuzz/artifacts/TARGET/: turn it into a
# unit test next to the code it broke. The corpus grows in fuzz/corpus/TARGET (not committed).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(frame layout proxy_route)
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  # A toolchain cannot be downloaded here; rustup's nightly must already be installed.
  msg="fuzz: SKIPPED, no nightly toolchain (rustup toolchain list)"
  [ "${DAMSELFLY_REQUIRE_FUZZ:-0}" != 1 ] || { echo "$msg" >&2; exit 1; }
  echo "$msg"
  exit 0
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
target_dir=${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-/var/cache/damselfly-target}-fuzz}
cd fuzz
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  echo "fuzz: $t for ${secs}s"
  cargo +nightly fuzz run --target-dir "$target_dir" "$t" "corpus/$t" -- \
    -max_total_time="$secs" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 2>&1 |
    grep -v '^#[0-9]' || { echo "fuzz: $t FAILED (input in fuzz/artifacts/$t)" >&2; exit 1; }
done
echo "fuzz: ${#targets[@]} passed, 0 failed"
