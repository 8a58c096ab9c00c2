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
- http://{{ $name }}-scheduler-{{ $i }}.{{ $name }}-scheduler.{{ $.Release.Namespace }}.svc:8002
{{- end }}
{{- end -}}
{{- define "damselfly.managerURL" -}}http://{{ include "damselfly.name" . }}-manager.{{ .Release.Namespace }}.svc:65003{{- end -}}
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
{{- define "damselfly.tlsVolume" -}}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ required "tls.secretName is required with tls.enabled" .Values.tls.secretName }}
{{- end }}
{{- end -}}
{{- define "damselfly.tlsMount" -}}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/damselfly/tls
  readOnly: true
{{- end }}
{{- end -}}
{{- define "damselfly.podSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}
