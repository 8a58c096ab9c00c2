{{- define "damselfly.name" -}}{{ .Release.Name }}-damselfly{{- end -}}
{{- define "damselfly.image" -}}{{ .Values.image.repository }}:{{ .Values.image.tag }}{{- end -}}
{{- define "damselfly.labels" -}}
app.kubernetes.io/name: damselfly
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
{{- define "damselfly.selector" -}}
app.kubernetes.io/name: damselfly
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}
{{/* gRPC URLs of the schedulers, one per StatefulSet pod (used without a manager). */}}
{{- define "damselfly.schedulerArgs" -}}
{{- $name := include "damselfly.name" . -}}
{{- range $i := until (int .Values.scheduler.replicas) }}
- --scheduler
- {{ include "damselfly.scheme" $ }}://{{ $name }}-scheduler-{{ $i }}.{{ $name }}-scheduler.{{ $.Release.Namespace }}.svc:8002
{{- end }}
{{- end -}}
{{- define "damselfly.scheme" -}}{{ if .Values.tls.enabled }}https{{ else }}http{{ end }}{{- end -}}
{{- define "damselfly.managerURL" -}}{{ include "damselfly.scheme" . }}://{{ include "damselfly.name" . }}-manager.{{ .Release.Namespace }}.svc:65003{{- end -}}
{{/* With tls.enabled the HTTP ports are HTTPS with client certificates, which kubelet probes
cannot present: each role then serves /healthz and /readyz alone, plain, on its health port
(--health-addr), and the probes go there. (dict "root" . "port" NAME-OR-NUMBER "health" PORT) */}}
{{- define "damselfly.healthArgs" -}}
{{- if .root.Values.tls.enabled }}
- --health-addr
- 0.0.0.0:{{ .health }}
{{- end }}
{{- end -}}
{{- define "damselfly.healthPort" -}}
{{- if .root.Values.tls.enabled }}
- {name: health, containerPort: {{ .health }}}
{{- end }}
{{- end -}}
{{- define "damselfly.probesFor" -}}
{{- include "damselfly.probes" (dict "port" (ternary "health" .port .root.Values.tls.enabled)) }}
{{- end -}}
{{- define "damselfly.probes" -}}
readinessProbe:
  httpGet: {path: /readyz, port: {{ .port }}}
  periodSeconds: 5
  failureThreshold: 3
livenessProbe:
  httpGet: {path: /healthz, port: {{ .port }}}
  periodSeconds: 10
  failureThreshold: 6
startupProbe:
  httpGet: {path: /healthz, port: {{ .port }}}
  periodSeconds: 2
  failureThreshold: 60
{{- end -}}
{{/* TLS of one role: (dict "root" . "role" "peer"). Volumes, mounts and the --config args. */}}
{{- define "damselfly.tlsVolume" -}}
{{- if .root.Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ required (printf "tls.secrets.%s is required with tls.enabled" .role) (index .root.Values.tls.secrets .role) }}
- name: tls-config
  configMap:
    name: {{ include "damselfly.name" .root }}-tls
{{- end }}
{{- end -}}
{{- define "damselfly.tlsMount" -}}
{{- if .root.Values.tls.enabled }}
- name: tls
  mountPath: /etc/damselfly/tls
  readOnly: true
- name: tls-config
  mountPath: /etc/damselfly/config
  readOnly: true
{{- end }}
{{- end -}}
{{- define "damselfly.tlsArgs" -}}
{{- if .root.Values.tls.enabled }}
- --config
- /etc/damselfly/config/tls.toml
{{- end }}
{{- end -}}
{{- define "damselfly.podSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}
