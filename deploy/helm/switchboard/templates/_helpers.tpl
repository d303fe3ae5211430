{{/* The chart name, overridable. */}}
{{- define "switchboard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The prefix of every resource name: the release name, with the chart name unless it is in it. */}}
{{- define "switchboard.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "switchboard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "switchboard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "switchboard.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "switchboard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: switchboard
{{- end -}}

{{- define "switchboard.secretName" -}}
{{- default (include "switchboard.fullname" .) .Values.secret.name -}}
{{- end -}}

{{- define "switchboard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "switchboard.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "switchboard.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "switchboard.hasProxyJwtKey" -}}
{{- if or .Values.secret.hasProxyJwtKey (and .Values.secret.create .Values.secret.proxyJwtKey) -}}true{{- end -}}
{{- end -}}

{{/*
The environment both the replicas and the migration Job get: every secret as a file mounted
from the Secret (the *_FILE settings; none in the environment, which child processes and
crash reports inherit), and the listen addresses.
*/}}
{{- define "switchboard.env" -}}
- name: SWITCHBOARD_DATABASE_URL_FILE
  value: /etc/switchboard/secret/database-url
- name: SWITCHBOARD_ADMIN_TOKEN_FILE
  value: /etc/switchboard/secret/admin-token
- name: SWITCHBOARD_CA_KEY_FILE
  value: /etc/switchboard/secret/ca-key
{{- if include "switchboard.hasProxyJwtKey" . }}
- name: SWITCHBOARD_PROXY_JWT_KEY_FILE
  value: /etc/switchboard/secret/proxy-jwt-key
{{- end }}
{{- if .Values.tls.secretName }}
- name: SWITCHBOARD_TLS_CERT_FILE
  value: /etc/switchboard/tls/tls.crt
- name: SWITCHBOARD_TLS_KEY_FILE
  value: /etc/switchboard/tls/tls.key
{{- end }}
- name: SWITCHBOARD_REST_ADDR
  value: {{ include "switchboard.listen" (list .Values.listenHost .Values.ports.rest) | quote }}
- name: SWITCHBOARD_XDS_ADDR
  value: {{ include "switchboard.listen" (list .Values.listenHost .Values.ports.xds) | quote }}
- name: SWITCHBOARD_ADMIN_ADDR
  value: {{ include "switchboard.listen" (list .Values.listenHost .Values.ports.admin) | quote }}
- name: SWITCHBOARD_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
- name: SWITCHBOARD_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
{{- range $k, $v := .Values.settings }}
- name: {{ printf "SWITCHBOARD_%s" ($k | upper) }}
  value: {{ $v | toString | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* host:port, with brackets around an IPv6 host. */}}
{{- define "switchboard.listen" -}}
{{- $host := index . 0 -}}{{- $port := index . 1 -}}
{{- if contains ":" $host -}}[{{ $host }}]:{{ $port }}{{- else -}}{{ $host }}:{{ $port }}{{- end -}}
{{- end -}}

{{/* The Secret's keys as files (mode 0400), and the TLS pair. */}}
{{- define "switchboard.volumes" -}}
- name: secret
  secret:
    secretName: {{ include "switchboard.secretName" . }}
    defaultMode: 0400
    items:
      - {key: database-url, path: database-url}
      - {key: admin-token, path: admin-token}
      - {key: ca-key, path: ca-key}
      {{- if include "switchboard.hasProxyJwtKey" . }}
      - {key: proxy-jwt-key, path: proxy-jwt-key}
      {{- end }}
{{- if .Values.tls.secretName }}
- name: tls
  secret:
    secretName: {{ .Values.tls.secretName }}
    defaultMode: 0400
{{- end }}
{{- end -}}

{{- define "switchboard.volumeMounts" -}}
- {name: secret, mountPath: /etc/switchboard/secret, readOnly: true}
{{- if .Values.tls.secretName }}
- {name: tls, mountPath: /etc/switchboard/tls, readOnly: true}
{{- end }}
{{- end -}}
