#!/usr/bin/env bash
# OCI distribution-spec conformance suite, pull (read-only) mode.
#   conformance.sh build WORKDIR        -> WORKDIR/bin/conformance (cached)
#   conformance.sh run WORKDIR LABEL REGISTRY REPO TAG MANIFEST_DIGEST "BLOB_DIGESTS" [VAR=value...]
#   conformance.sh build-legacy WORKDIR -> WORKDIR/bin/conformance-legacy.test (the 2023 ginkgo suite)
#   conformance.sh run-legacy WORKDIR LABEL REGISTRY REPO TAG MANIFEST_DIGEST BLOB_DIGEST
# `run` prints the suite's output; the caller judges it (the suite exits 0
# even when its config fails to load).
set -euo pipefail
VER=v0.0.0-20260831232431-97274622c111
LVER=v0.0.0-20231101194043-f2182352d4cc
MOD=github.com/opencontainers/distribution-spec/conformance
cmd=$1 T=$2
case $cmd in
build)
  [ -x "$T/bin/conformance" ] && exit 0
  mkdir -p "$T"
  go mod download "$MOD@$VER"
  SRC="$(go env GOMODCACHE)/$MOD@$VER"
  rm -rf "$T/src" && cp -r "$SRC" "$T/src" && chmod -R u+w "$T/src"
  # This version panics writing its report when push is disabled (a nil
  # entry of the results map); skip nil entries.
  sed -i 's/^\t\tresults.Data\[r.State.Data\[k\].name\] = v$/\t\tif d := r.State.Data[k]; d != nil { results.Data[d.name] = v }/' "$T/src/run.go"
  grep -q 'if d := r.State.Data\[k\]; d != nil' "$T/src/run.go"
  (cd "$T/src" && go build -o "$T/bin/conformance.tmp" . && mv "$T/bin/conformance.tmp" "$T/bin/conformance")
  ;;
run)
  label=$3 reg=$4 repo=$5 tag=$6 mdig=$7 blobs=$8; shift 8
  mkdir -p "$T/results-$label"
  cd "$T/results-$label"
  env OCI_REGISTRY="$reg" OCI_TLS=disabled OCI_REPO1="$repo" OCI_REPO2="$repo-other" \
    OCI_API_PUSH=false OCI_API_BLOBS_DELETE=false OCI_API_MANIFESTS_DELETE=false OCI_API_TAGS_DELETE=false \
    OCI_RO_DATA_TAGS="$tag" OCI_RO_DATA_MANIFESTS="$mdig" OCI_RO_DATA_BLOBS="$blobs" OCI_RO_DATA_REFERRERS="$mdig" \
    OCI_RESULTS_DIR="$T/results-$label" "$@" "$T/bin/conformance" 2>&1 || echo "conformance exit status $?"
  ;;
build-legacy)
  [ -x "$T/bin/conformance-legacy.test" ] && exit 0
  mkdir -p "$T/bin"
  go mod download "$MOD@$LVER"
  rm -rf "$T/lsrc" && cp -r "$(go env GOMODCACHE)/$MOD@$LVER" "$T/lsrc" && chmod -R u+w "$T/lsrc"
  (cd "$T/lsrc" && go test -c -o "$T/bin/conformance-legacy.tmp" . && mv "$T/bin/conformance-legacy.tmp" "$T/bin/conformance-legacy.test")
  ;;
run-legacy)
  label=$3 reg=$4 repo=$5 tag=$6 mdig=$7 blob=$8
  rm -rf "$T/legacy-$label" && mkdir -p "$T/legacy-$label"
  cd "$T/legacy-$label"
  env OCI_ROOT_URL="http://$reg" OCI_NAMESPACE="$repo" OCI_CROSSMOUNT_NAMESPACE="$repo-other" \
    OCI_TEST_PULL=1 OCI_TAG_NAME="$tag" OCI_MANIFEST_DIGEST="$mdig" OCI_BLOB_DIGEST="$blob" \
    OCI_HIDE_SKIPPED_WORKFLOWS=1 OCI_REPORT_DIR="$T/legacy-$label" "$T/bin/conformance-legacy.test" 2>&1 \
    || echo "conformance exit status $?"
  ;;
*) echo "usage: $0 build|run ..."; exit 2 ;;
esac
