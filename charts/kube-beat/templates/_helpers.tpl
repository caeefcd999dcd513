{{/* The chart's name (`nameOverride` replaces it, e.g. inside an umbrella chart). */}}
{{- define "kube-beat.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name: `fullnameOverride`, else the release name if it already contains
the chart's name, else RELEASE-NAME. 63 characters at most (a DNS label). */}}
{{- define "kube-beat.fullname" -}}
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

{{/* Immutable once a Deployment exists: never add commonLabels or podLabels here. */}}
{{- define "kube-beat.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kube-beat.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Every object's labels (commonLabels included). */}}
{{- define "kube-beat.labels" -}}
{{ include "kube-beat.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* A pod template's labels: selector labels, then podLabels over commonLabels, as one map so
a key set in both is written once (podLabels wins). The schema keeps app.kubernetes.io/* and
helm.sh/* for the chart itself. */}}
{{- define "kube-beat.podLabels" -}}
{{ include "kube-beat.selectorLabels" . }}
{{- with merge (dict) (.Values.podLabels | default dict) (.Values.commonLabels | default dict) }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "kube-beat.serviceAccountName" -}}
{{- default (include "kube-beat.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* `repository@digest` when a digest is set (the tag is then ignored), else `repository:tag`. */}}
{{- define "kube-beat.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* Connection settings, only ever from Secrets. */}}
{{- define "kube-beat.connectionEnv" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef: {name: {{ .Values.database.existingSecret | quote }}, key: {{ .Values.database.key | quote }}}
- name: BROKER_URL
  valueFrom:
    secretKeyRef: {name: {{ .Values.broker.existingSecret | quote }}, key: {{ .Values.broker.key | quote }}}
{{- if .Values.broker.transportOptionsKey }}
- name: BROKER_TRANSPORT_OPTIONS
  valueFrom:
    secretKeyRef: {name: {{ .Values.broker.existingSecret | quote }}, key: {{ .Values.broker.transportOptionsKey | quote }}}
{{- else if .Values.broker.transportOptions }}
- name: BROKER_TRANSPORT_OPTIONS
  value: {{ .Values.broker.transportOptions | toJson | quote }}
{{- end }}
{{- if .Values.resultBackend.enabled }}
- name: RESULT_BACKEND
  valueFrom:
    secretKeyRef: {name: {{ .Values.resultBackend.existingSecret | quote }}, key: {{ .Values.resultBackend.key | quote }}}
{{- if .Values.resultBackend.transportOptionsKey }}
- name: RESULT_BACKEND_TRANSPORT_OPTIONS
  valueFrom:
    secretKeyRef: {name: {{ .Values.resultBackend.existingSecret | quote }}, key: {{ .Values.resultBackend.transportOptionsKey | quote }}}
{{- else if .Values.resultBackend.transportOptions }}
- name: RESULT_BACKEND_TRANSPORT_OPTIONS
  value: {{ .Values.resultBackend.transportOptions | toJson | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Pod-level scheduling and identity shared by the Deployment, the migrate Job and the test
pod: pull secrets, security context, priority, node placement. */}}
{{- define "kube-beat.podScheduling" -}}
securityContext: {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . | quote }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Preflight: with a live cluster behind the render (`helm install/upgrade`, not `helm
template`), refuse at once when a connection Secret or key is missing, instead of a hook Job
that never starts. `lookup` returns nothing without a cluster, so nothing fails there. */}}
{{- define "kube-beat.checkSecret" -}}
{{- $ctx := index . 0 -}}
{{- $name := index . 1 -}}
{{- $key := index . 2 -}}
{{- $what := index . 3 -}}
{{- $ns := $ctx.Release.Namespace -}}
{{- $secret := lookup "v1" "Secret" $ns $name -}}
{{- if not $secret -}}
{{- fail (printf "\n\nThe %s Secret %q does not exist in namespace %q (values: %s.existingSecret).\nCreate it first, e.g.:\n  kubectl -n %s create secret generic %s --from-literal=%s=...\nor set preflight.checkSecrets=false to skip this check." $what $name $ns $what $ns $name $key) -}}
{{- else if not (hasKey (default (dict) $secret.data) $key) -}}
{{- fail (printf "\n\nThe Secret %q in namespace %q has no key %q (values: %s.key).\nAdd it, e.g.:\n  kubectl -n %s patch secret %s --type merge -p '{\"stringData\": {\"%s\": \"...\"}}'\nor set preflight.checkSecrets=false to skip this check." $name $ns $key $what $ns $name $key) -}}
{{- end -}}
{{- end -}}

{{- define "kube-beat.preflight" -}}
{{- if and .Values.preflight.checkSecrets (lookup "v1" "Namespace" "" .Release.Namespace) -}}
{{- include "kube-beat.checkSecret" (list . .Values.database.existingSecret .Values.database.key "database") -}}
{{- include "kube-beat.checkSecret" (list . .Values.broker.existingSecret .Values.broker.key "broker") -}}
{{- if .Values.resultBackend.enabled -}}
{{- include "kube-beat.checkSecret" (list . .Values.resultBackend.existingSecret .Values.resultBackend.key "resultBackend") -}}
{{- end -}}
{{- end -}}
{{- end -}}
