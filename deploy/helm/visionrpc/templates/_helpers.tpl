{{/* Names and labels, in the shape `helm create` gives them. */}}
{{- define "visionrpc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "visionrpc.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The headless Service's name: the full name cut so that "-headless" still fits in 63 characters. */}}
{{- define "visionrpc.headlessName" -}}
{{- printf "%s-headless" (include "visionrpc.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{- define "visionrpc.selectorLabels" -}}
app.kubernetes.io/name: {{ include "visionrpc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "visionrpc.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "visionrpc.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "visionrpc.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "visionrpc.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "visionrpc.image" -}}
{{- $tag := .Values.image.tag | default (ternary "gpu" "cpu" .Values.gpu.enabled) }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{/* Whole seconds of the drain, and the termination grace that outlasts it. */}}
{{- define "visionrpc.terminationGrace" -}}
{{- add (ceil .Values.drain.noticeSeconds) (ceil .Values.drain.graceSeconds) (ceil .Values.drain.marginSeconds) }}
{{- end }}

{{/* Probes: the kubelet's gRPC probes cannot speak TLS, so a TLS server is probed from inside (exec). */}}
{{- define "visionrpc.probeMode" -}}
{{- if .Values.tls.enabled }}exec{{ else }}{{ .Values.probes.mode }}{{ end }}
{{- end }}

{{/* One probe's action; call with (dict "root" $ "service" NAME).
With TLS the probe verifies the server's certificate against the ca.crt of the TLS secret, for the name the
certificate carries (not 127.0.0.1); with mTLS it presents the server's own certificate as its client
certificate, so give that certificate the "client auth" usage (or none). */}}
{{- define "visionrpc.probeAction" -}}
{{- $v := .root.Values }}
{{- if eq (include "visionrpc.probeMode" .root) "grpc" }}
grpc:
  port: {{ $v.server.port }}
  service: {{ .service | quote }}
{{- else }}
exec:
  command:
    - visionrpc
    - health
    - --address
    - {{ printf "127.0.0.1:%v" $v.server.port | quote }}
    - --service
    - {{ .service | quote }}
    - --timeout
    - {{ sub $v.probes.exec.timeoutSeconds 1 | quote }}
    {{- if $v.tls.enabled }}
    - --tls-ca-file
    - {{ printf "%s/ca.crt" $v.tls.mountPath | quote }}
    - --tls-server-name
    - {{ $v.probes.exec.tlsServerName | default (include "visionrpc.fullname" .root) | quote }}
    {{- if $v.tls.clientCA.enabled }}
    - --tls-cert-file
    - {{ printf "%s/%s" $v.tls.mountPath $v.tls.certKey | quote }}
    - --tls-key-file
    - {{ printf "%s/%s" $v.tls.mountPath $v.tls.keyKey | quote }}
    {{- end }}
    {{- end }}
    {{- range $v.probes.exec.extraArgs }}
    - {{ . | quote }}
    {{- end }}
{{- end }}
{{- end }}

{{/* A probe's timeout: exec probes start a Python process (about a second of CPU), so they get their own. */}}
{{- define "visionrpc.probeTimeout" -}}
{{- if eq (include "visionrpc.probeMode" .root) "exec" }}{{ .root.Values.probes.exec.timeoutSeconds }}{{ else }}{{ .probe.timeoutSeconds }}{{ end }}
{{- end }}
