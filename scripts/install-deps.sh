#!/usr/bin/env bash
# Installs what Damselfly's tests and demo need on a fresh Debian 12 machine (run as root).
# Idempotent: packages already present are skipped quickly.
set -euo pipefail
PKGS=(iproute2 curl jq bc python3 ca-certificates postgresql chromium chromium-driver
      containerd docker-registry skopeo umoci busybox-static apache2-utils docker.io openssl
      aria2 opentracker mktorrent prometheus python3-venv
      musl-tools docker-compose file systemd)
missing=()
for p in "${PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# crictl for the CRI tests (registry-proxy/tests/cri.rs), about 80 s to build.
if command -v go >/dev/null && ! command -v crictl >/dev/null && [ ! -x "$(go env GOPATH)/bin/crictl" ]; then
  go install sigs.k8s.io/cri-tools/cmd/crictl@v1.37.0
fi
# A real S3 server for the object-storage test (e2e/tests/store.rs): moto from PyPI in a venv.
[ -x /opt/damselfly-moto/bin/moto_server ] || {
  python3 -m venv /opt/damselfly-moto && /opt/damselfly-moto/bin/pip install -q 'moto[server]==5.2.5'; }
# containerd 2.3 for the snapshotter's transfer-service test (e2e/tests/snapshotter.rs), from the
# Go module proxy: about 2 minutes of both cores, once.
CTD2=/opt/damselfly-containerd2/bin
if command -v go >/dev/null; then
  for c in containerd ctr containerd-shim-runc-v2; do
    [ -x "$CTD2/$c" ] || GOBIN=$CTD2 GOFLAGS=-mod=mod go install "github.com/containerd/containerd/v2/cmd/$c@v2.3.0"
  done
fi
# Go modules of containerd's snapshotter suite (scripts/snapshotter-suite.sh), from the Go module proxy.
command -v go >/dev/null || { echo "go not found: install Go 1.26+ first" >&2; exit 1; }
(cd "$(dirname "$0")/../snapshotter/testsuite" && go mod download)
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy
# The static binary of the container image (scripts/build-image.sh, scripts/test-deploy.sh).
rustup target list --installed | grep -qx x86_64-unknown-linux-musl || rustup target add x86_64-unknown-linux-musl
