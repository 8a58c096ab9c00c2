#!/usr/bin/env bash
# The Helm chart's checks (no cluster runs here): `helm lint`, `helm template` with the default
# values and with deploy/helm/values-all.yaml (every option on), and every rendered object
# validated against the Kubernetes 1.33 schemas by kubernetes-validate (shipped offline). The
# ServiceMonitors (a CRD, not in those schemas) are validated against the openAPIV3Schema of the
# Prometheus operator's own CRD (from its Go module, served by the Go module proxy), strictly:
# unknown fields are errors, as with kubectl's strict field validation.
# helm and the validator are installed once under /opt/damselfly-tools.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=/opt/damselfly-tools
HELM=$TOOLS/bin/helm
if [ ! -x "$HELM" ]; then
  GOBIN=$TOOLS/bin go install helm.sh/helm/v3/cmd/helm@v3.19.5
fi
KV=$TOOLS/venv/bin/kubernetes-validate
if [ ! -x "$KV" ]; then
  python3 -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install -q kubernetes-validate==1.37.0
fi
PROM_OP=github.com/prometheus-operator/prometheus-operator@v0.88.0
SM_CRD=$(cd /tmp && go mod download -json "$PROM_OP" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml
[ -f "$SM_CRD" ] || { echo "no ServiceMonitor CRD at $SM_CRD"; exit 1; }
chart=deploy/helm/damselfly
"$HELM" lint "$chart"
"$HELM" lint "$chart" -f deploy/helm/values-all.yaml
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for v in default all; do
  args=()
  [ "$v" = all ] && args=(-f deploy/helm/values-all.yaml)
  "$HELM" template dfly "$chart" --kube-version 1.33.0 --namespace damselfly "${args[@]}" > "$out/$v.yaml"
  # One file per object; CRD kinds apart.
  python3 - "$out/$v.yaml" "$out/$v" <<'PY'
import sys, os, re
text = open(sys.argv[1]).read()
os.makedirs(sys.argv[2])
n = 0
for doc in re.split(r"^---\s*$", text, flags=re.M):
    if not re.search(r"^kind:", doc, flags=re.M):
        continue
    kind = re.search(r"^kind:\s*(\S+)", doc, flags=re.M).group(1)
    n += 1
    sub = "crd" if kind == "ServiceMonitor" else "k8s"
    os.makedirs(os.path.join(sys.argv[2], sub), exist_ok=True)
    open(os.path.join(sys.argv[2], sub, f"{n:03d}-{kind}.yaml"), "w").write(doc)
print(f"{sys.argv[1]}: {n} objects")
PY
  "$KV" --strict -k 1.33.0 "$out/$v"/k8s/*.yaml
  if compgen -G "$out/$v/crd/*.yaml" > /dev/null; then
    "$TOOLS/venv/bin/python" - "$SM_CRD" "$out/$v"/crd/*.yaml <<'PY'
import sys, yaml, jsonschema
crd = yaml.safe_load(open(sys.argv[1]))
version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
schema = version["schema"]["openAPIV3Schema"]
def strict(s):
    # Unknown fields are errors unless the schema keeps them on purpose.
    if isinstance(s, dict):
        if s.get("type") == "object" and "properties" in s and not s.get("x-kubernetes-preserve-unknown-fields"):
            s.setdefault("additionalProperties", False)
        for v in s.values():
            strict(v)
    elif isinstance(s, list):
        for v in s:
            strict(v)
strict(schema)
for path in sys.argv[2:]:
    obj = yaml.safe_load(open(path))
    assert obj["apiVersion"] == "monitoring.coreos.com/v1" and obj["kind"] == "ServiceMonitor", path
    jsonschema.validate(obj, schema)
    print(f"{path}: valid ServiceMonitor")
PY
  fi
done
# The all-on values render every kind the chart has.
grep -q "^kind: PersistentVolumeClaim$" "$out/default.yaml" || { echo "the defaults render no manager PVC"; exit 1; }
for kind in Deployment StatefulSet DaemonSet Service PodDisruptionBudget Secret RuntimeClass ServiceMonitor; do
  grep -q "^kind: $kind$" "$out/all.yaml" || { echo "values-all.yaml renders no $kind"; exit 1; }
done
echo "helm chart: lint, template and schema checks passed"
