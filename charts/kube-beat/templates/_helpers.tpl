{{/* The release's full name (kube-beat unless the release is named otherwise). */}}
{{- define "kube-beat.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kube-beat.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kube-beat.labels" -}}
{{ include "kube-beat.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "kube-beat.serviceAccountName" -}}
{{- default (include "kube-beat.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "kube-beat.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* Connection settings, only ever from Secrets. */}}
{{- define "kube-beat.connectionEnv" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef: {name: {{ .Values.database.existingSecret | quote }}, key: {{ .Values.database.key | quote }}}
- name: BROKER_URL
  valueFrom:
    secretKeyRef: {name: {{ .Values.broker.existingSecret | quote }}, key: {{ .Values.broker.key | quote }}}
{{- if .Values.resultBackend.enabled }}
- name: RESULT_BACKEND
  valueFrom:
    secretKeyRef: {name: {{ .Values.resultBackend.existingSecret | quote }}, key: {{ .Values.resultBackend.key | quote }}}
{{- end }}
{{- end -}}
