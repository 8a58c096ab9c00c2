#!/usr/bin/env bash
# containerd's own snapshotter test suite (core/snapshots/testsuite of containerd v2.4.2, 21 tests)
# through containerd's proxy snapshotter client against `damselfly snapshotter` on a unix socket.
# Needs root (the suite mounts overlays) and Go (modules from the Go module proxy).
# usage: scripts/snapshotter-suite.sh      env: DAMSELFLY_BIN (default: target/debug/damselfly)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${DAMSELFLY_BIN:-${CARGO_TARGET_DIR:-target}/debug/damselfly}
OUT=${CARGO_TARGET_DIR:-target}/go
mkdir -p "$OUT"
(cd snapshotter/testsuite && go test -c -o "$OUT/snapshotter-suite.test" .)
T=$(mktemp -d /tmp/damselfly-snapsuite.XXXXXX)
SVC=
cleanup() {
  if [ -n "$SVC" ]; then kill "$SVC" 2>/dev/null || true; wait "$SVC" 2>/dev/null || true; fi
  # Mounts the suite left behind on failure, deepest first.
  grep -F " $T/" /proc/self/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$T"
}
trap cleanup EXIT
"$BIN" snapshotter --root "$T/root" --socket "$T/snapshotter.sock" --metrics-listen 127.0.0.1:0 \
  2> "$T/snapshotter.log" & SVC=$!
for _ in $(seq 100); do [ -S "$T/snapshotter.sock" ] && break; sleep 0.1; done
[ -S "$T/snapshotter.sock" ] || { cat "$T/snapshotter.log" >&2; echo "snapshotter did not start" >&2; exit 1; }
# -test.parallel=1: the suite marks its tests parallel but assumes a fresh snapshotter per test;
# suite_test.go removes every snapshot before and after each test instead.
set +e
SNAPSHOTTER_SOCKET=$T/snapshotter.sock "$OUT/snapshotter-suite.test" -test.v -test.parallel=1 \
  -test.timeout=10m > "$T/suite.log" 2>&1
rc=$?
set -e
grep -E '^\s*--- (PASS|FAIL|SKIP)' "$T/suite.log" || true
passed=$(grep -cE '^\s+--- PASS' "$T/suite.log" || true)
if [ $rc -ne 0 ] || [ "$passed" -ne 21 ]; then
  cat "$T/suite.log" >&2; tail -50 "$T/snapshotter.log" >&2
  echo "snapshotter suite: $passed of 21 passed (exit $rc)" >&2
  exit 1
fi
echo "snapshotter suite: 21 of 21 passed"
