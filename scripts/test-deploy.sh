#!/usr/bin/env bash
# Checks of deploy/ (called by scripts/test.sh, needs root): example alert rules (promtool),
# systemd units (systemd-analyze verify), the static binary and the FROM scratch image, the
# Compose stack started for real with a get through each peer (e2e/tests/compose.rs), and the
# Helm chart when deploy/helm exists (helm lint/template, every object against the Kubernetes
# schemas). The static binary is built once (profile `image`); tools are cached under /opt.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/root.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/damselfly-target}
: "${DAMSELFLY_BIN:=$CARGO_TARGET_DIR/debug/damselfly}"
export DAMSELFLY_BIN

echo "== promtool check rules"
promtool check rules deploy/prometheus/alerts.yaml

echo "== systemd-analyze verify"
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/bin" "$root/etc/systemd/system" "$root/usr/lib/systemd"
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
cp "$DAMSELFLY_BIN" "$root/usr/bin/damselfly"
cp deploy/systemd/*.service "$root/etc/systemd/system/"
units=()
for f in deploy/systemd/*.service; do units+=("$root/etc/systemd/system/$(basename "$f")"); done
out=$(systemd-analyze verify --root="$root" "${units[@]}" 2>&1) || { echo "$out"; exit 1; }
[ -z "$out" ] || { echo "systemd-analyze verify is not clean:"; echo "$out"; exit 1; }

echo "== static binary (musl) for the image"
TARGET=x86_64-unknown-linux-musl
rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET"
CC_x86_64_unknown_linux_musl=musl-gcc cargo build -q --profile image --target "$TARGET" -p damselfly
musl="$CARGO_TARGET_DIR/$TARGET/image/damselfly"
file "$musl" | grep -Eq "statically linked|static-pie linked" || { echo "$musl is not static: $(file "$musl")"; exit 1; }

echo "== image, docker run --help, Compose stack with a get through each peer"
DAMSELFLY_MUSL_BIN="$musl" cargo test -q -p damselfly-e2e --test compose -- --ignored

if [ -d deploy/helm/damselfly ]; then
  echo "== Helm chart"
  ./scripts/test-helm.sh
fi
echo "test-deploy: all checks passed"
