{{- define "finsent.name" -}}finsent{{- end -}}

{{- define "finsent.fullname" -}}
{{- if contains "finsent" .Release.Name -}}{{ .Release.Name | trunc 50 | trimSuffix "-" }}{{- else -}}{{ printf "%s-finsent" .Release.Name | trunc 50 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "finsent.labels" -}}
app.kubernetes.io/name: {{ include "finsent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "finsent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "finsent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "finsent.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}{{ default (include "finsent.fullname" .) .Values.serviceAccount.name }}{{- else -}}{{ default "default" .Values.serviceAccount.name }}{{- end -}}
{{- end -}}

{{- define "finsent.image" -}}
{{- $image := .Values.image -}}
{{- if .Values.gpu.enabled -}}{{- $image = .Values.gpu.image -}}{{- end -}}
{{ $image.repository }}:{{ default .Chart.AppVersion $image.tag }}
{{- end -}}

{{/* Checks that stop a render with a message that says what to change. */}}
{{- define "finsent.validate" -}}
{{- if gt (int .Values.replicas) (int .Values.partitions) -}}
{{- fail (printf "replicas (%d) is more than partitions (%d): the extra workers would sit idle" (int .Values.replicas) (int .Values.partitions)) -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.maxReplicas) (int .Values.partitions)) -}}
{{- fail (printf "autoscaling.maxReplicas (%d) is more than partitions (%d): a consumer group cannot use more workers than partitions" (int .Values.autoscaling.maxReplicas) (int .Values.partitions)) -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- fail "autoscaling.minReplicas is more than autoscaling.maxReplicas" -}}
{{- end -}}
{{- range $key, $value := .Values.config -}}
{{- if regexMatch "(?i)(PASSWORD|API_KEY|SECRET|TOKEN)" $key -}}
{{- fail (printf "config.%s looks like a secret: keep it in a Secret and reference it (kafka.saslPasswordSecret, elasticsearch.passwordSecret, elasticsearch.apiKeySecret)" $key) -}}
{{- end -}}
{{- if hasPrefix "FINSENT_" $key -}}
{{- fail (printf "config.%s: write settings without the FINSENT_ prefix" $key) -}}
{{- end -}}
{{- end -}}
{{- if not (has .Values.model.source (list "image" "pvc" "initContainer")) -}}
{{- fail (printf "model.source %q is not one of image, pvc, initContainer" .Values.model.source) -}}
{{- end -}}
{{- if and (eq .Values.model.source "pvc") (not .Values.model.pvc.claimName) -}}
{{- fail "model.source is pvc but model.pvc.claimName is empty" -}}
{{- end -}}
{{- if and (eq .Values.model.source "initContainer") (not .Values.model.initContainer.image) -}}
{{- fail "model.source is initContainer but model.initContainer.image is empty" -}}
{{- end -}}
{{- end -}}

{{/* The bundle's path inside the worker container. */}}
{{- define "finsent.modelPath" -}}
{{- if eq .Values.model.source "image" -}}{{ .Values.model.path }}{{- else -}}{{ printf "/models/%s" (trimPrefix "/models/" (trimPrefix "/" .Values.model.path)) }}{{- end -}}
{{- end -}}
