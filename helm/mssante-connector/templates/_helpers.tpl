{{/* Names and labels ----------------------------------------------------------------------- */}}

{{- define "mssante-connector.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mssante-connector.fullname" -}}
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

{{- define "mssante-connector.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mssante-connector.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mssante-connector.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "mssante-connector.labels" -}}
helm.sh/chart: {{ include "mssante-connector.chart" . }}
{{ include "mssante-connector.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "mssante-connector.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mssante-connector.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "mssante-connector.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Fixed paths inside the image (see the Dockerfile) ---------------------------------------- */}}

{{- define "mssante-connector.dataDir" -}}/var/lib/mssante-connector{{- end -}}
{{- define "mssante-connector.configPath" -}}/etc/mssante-connector/connector.toml{{- end -}}
{{- define "mssante-connector.certsDir" -}}/etc/mssante-connector/certs{{- end -}}
{{- define "mssante-connector.secretsDir" -}}/etc/mssante-connector/secrets{{- end -}}

{{/* The Secret holding the PostgreSQL DSN, and the one holding the payload keys. */}}
{{- define "mssante-connector.storeSecretName" -}}
{{- default (printf "%s-store" (include "mssante-connector.fullname" .)) .Values.store.postgres.existingSecret -}}
{{- end -}}

{{- define "mssante-connector.encryptionSecretName" -}}
{{- default (printf "%s-payload-keys" (include "mssante-connector.fullname" .)) .Values.store.encryption.existingSecret -}}
{{- end -}}

{{/* A tenant's Secret name (args: root context, tenant); empty when the tenant has none. */}}
{{- define "mssante-connector.tenantSecretName" -}}
{{- $root := index . 0 -}}
{{- $tenant := index . 1 -}}
{{- $certs := default (dict) (index $tenant "certificates") -}}
{{- if index $certs "existingSecret" -}}
{{- index $certs "existingSecret" -}}
{{- else if index $certs "files" -}}
{{- printf "%s-%s-certs" (include "mssante-connector.fullname" $root) $tenant.id | trunc 253 -}}
{{- end -}}
{{- end -}}

{{/* TOML rendering -------------------------------------------------------------------------
Each helper takes (list "toml_key" dict "valuesKey" [extra]) and renders one line, preceded by a
newline, only when the values set the key: unset keys keep the connector's own defaults. Strings go
through toJson (JSON escapes are valid TOML basic-string escapes); integers through int, because
Helm may read YAML numbers as float64. */}}

{{- define "mssante-connector.toml.str" -}}
{{- $key := index . 0 -}}
{{- $dict := index . 1 -}}
{{- $name := index . 2 -}}
{{- if and (hasKey $dict $name) (ne (toString (index $dict $name)) "") }}
{{ $key }} = {{ index $dict $name | toString | toJson }}
{{- end -}}
{{- end -}}

{{- define "mssante-connector.toml.int" -}}
{{- $key := index . 0 -}}
{{- $dict := index . 1 -}}
{{- $name := index . 2 -}}
{{- if hasKey $dict $name }}
{{ $key }} = {{ index $dict $name | int64 }}
{{- end -}}
{{- end -}}

{{- define "mssante-connector.toml.number" -}}
{{- $key := index . 0 -}}
{{- $dict := index . 1 -}}
{{- $name := index . 2 -}}
{{- if hasKey $dict $name }}
{{ $key }} = {{ index $dict $name }}
{{- end -}}
{{- end -}}

{{- define "mssante-connector.toml.bool" -}}
{{- $key := index . 0 -}}
{{- $dict := index . 1 -}}
{{- $name := index . 2 -}}
{{- if hasKey $dict $name }}
{{ $key }} = {{ index $dict $name | ternary "true" "false" }}
{{- end -}}
{{- end -}}

{{/* A file of the tenant's Secret: (list "toml_key" dict "valuesKey" tenantId). Absolute paths
are kept; relative ones are resolved in /etc/mssante-connector/certs/<tenant id>/. */}}
{{- /* A list of files (`key = ["...", ...]`), each as toml.file makes it: relative to the tenant's
Secret unless absolute; nothing when the list is empty. */ -}}
{{- define "mssante-connector.toml.files" -}}
{{- $key := index . 0 -}}
{{- $dict := index . 1 -}}
{{- $name := index . 2 -}}
{{- $tenantId := index . 3 -}}
{{- $paths := list -}}
{{- range (default (list) (index $dict $name)) -}}
{{- $value := toString . -}}
{{- if not (hasPrefix "/" $value) -}}
{{- $value = printf "%s/%s/%s" (include "mssante-connector.certsDir" (dict)) $tenantId $value -}}
{{- end -}}
{{- $paths = append $paths $value -}}
{{- end -}}
{{- if $paths }}
{{ $key }} = {{ $paths | toJson }}
{{- end -}}
{{- end -}}

{{- define "mssante-connector.toml.file" -}}
{{- $key := index . 0 -}}
{{- $dict := index . 1 -}}
{{- $name := index . 2 -}}
{{- $tenantId := index . 3 -}}
{{- if and (hasKey $dict $name) (ne (toString (index $dict $name)) "") -}}
{{- $value := index $dict $name | toString -}}
{{- if not (hasPrefix "/" $value) -}}
{{- $value = printf "%s/%s/%s" (include "mssante-connector.certsDir" (dict)) $tenantId $value -}}
{{- end }}
{{ $key }} = {{ $value | toJson }}
{{- end -}}
{{- end -}}

{{/* Checks the schema cannot express ---------------------------------------------------------- */}}
{{- define "mssante-connector.validate" -}}
{{- if and (eq .Values.store.backend "sqlite") (gt (int .Values.replicaCount) 1) -}}
{{- fail "replicaCount > 1 needs store.backend = postgres: SQLite allows one writer" -}}
{{- end -}}
{{- if and (eq .Values.store.backend "postgres") (not .Values.store.postgres.existingSecret) (not .Values.store.postgres.dsn) -}}
{{- fail "store.backend = postgres needs store.postgres.existingSecret or store.postgres.dsn" -}}
{{- end -}}
{{- if not .Values.tenants -}}
{{- fail "at least one tenant is required (tenants)" -}}
{{- end -}}
{{- $ids := dict -}}
{{- $ports := dict -}}
{{- range $tenant := .Values.tenants -}}
{{- if hasKey $ids $tenant.id -}}
{{- fail (printf "duplicate tenant id %q" $tenant.id) -}}
{{- end -}}
{{- $_ := set $ids $tenant.id true -}}
{{- range $listener := index $tenant "listeners" -}}
{{- $port := toString (int (default 2575 (index $listener "port"))) -}}
{{- if hasKey $ports $port -}}
{{- fail (printf "tenant %q: port %s is already used by tenant %q" $tenant.id $port (get $ports $port)) -}}
{{- end -}}
{{- $_ := set $ports $port $tenant.id -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The pod template shared by the StatefulSet (sqlite) and the Deployment (postgres) --------- */}}
{{- define "mssante-connector.podTemplate" -}}
metadata:
  labels:
    {{- include "mssante-connector.selectorLabels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
    checksum/secret: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "mssante-connector.serviceAccountName" . }}
  automountServiceAccountToken: false
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  containers:
    - name: connector
      image: {{ include "mssante-connector.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args:
        - serve
        - --config
        - {{ include "mssante-connector.configPath" . }}
      env:
        - name: MSSCONNECTOR_CONFIG
          value: {{ include "mssante-connector.configPath" . }}
        - name: TMPDIR
          value: /tmp
        {{- with .Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - name: admin
          containerPort: {{ .Values.config.admin.port | int }}
          protocol: TCP
        {{- range $t, $tenant := .Values.tenants }}
        {{- range $l, $listener := index $tenant "listeners" }}
        - name: {{ printf "mllp-%d-%d" $t $l }}
          containerPort: {{ default 2575 (index $listener "port") | int }}
          protocol: TCP
        {{- end }}
        {{- end }}
      {{- with .Values.probes.startup }}
      {{- if .enabled }}
      startupProbe:
        httpGet:
          path: /healthz
          port: admin
        periodSeconds: {{ .periodSeconds }}
        timeoutSeconds: {{ .timeoutSeconds }}
        failureThreshold: {{ .failureThreshold }}
      {{- end }}
      {{- end }}
      {{- with .Values.probes.liveness }}
      {{- if .enabled }}
      livenessProbe:
        httpGet:
          path: /healthz
          port: admin
        periodSeconds: {{ .periodSeconds }}
        timeoutSeconds: {{ .timeoutSeconds }}
        failureThreshold: {{ .failureThreshold }}
      {{- end }}
      {{- end }}
      {{- with .Values.probes.readiness }}
      {{- if .enabled }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: admin
        periodSeconds: {{ .periodSeconds }}
        timeoutSeconds: {{ .timeoutSeconds }}
        failureThreshold: {{ .failureThreshold }}
      {{- end }}
      {{- end }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      volumeMounts:
        - name: data
          mountPath: {{ include "mssante-connector.dataDir" . }}
        - name: tmp
          mountPath: /tmp
        - name: config
          mountPath: {{ include "mssante-connector.configPath" . }}
          subPath: connector.toml
          readOnly: true
        {{- if or (eq .Values.store.backend "postgres") .Values.store.encryption.enabled }}
        - name: secrets
          mountPath: {{ include "mssante-connector.secretsDir" . }}
          readOnly: true
        {{- end }}
        {{- range $tenant := .Values.tenants }}
        {{- if include "mssante-connector.tenantSecretName" (list $ $tenant) }}
        - name: {{ printf "certs-%s" $tenant.id }}
          mountPath: {{ printf "%s/%s" (include "mssante-connector.certsDir" $) $tenant.id }}
          readOnly: true
        {{- end }}
        {{- end }}
        {{- with .Values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    {{- if or (ne .Values.store.backend "sqlite") (not .Values.persistence.enabled) }}
    - name: data
      emptyDir:
        sizeLimit: {{ .Values.dataVolume.sizeLimit }}
    {{- else if .Values.persistence.existingClaim }}
    - name: data
      persistentVolumeClaim:
        claimName: {{ .Values.persistence.existingClaim }}
    {{- end }}
    - name: tmp
      emptyDir:
        medium: Memory
        sizeLimit: {{ .Values.tmpVolume.sizeLimit }}
    - name: config
      configMap:
        name: {{ include "mssante-connector.fullname" . }}
    {{- if or (eq .Values.store.backend "postgres") .Values.store.encryption.enabled }}
    - name: secrets
      projected:
        defaultMode: 0440
        sources:
          {{- if eq .Values.store.backend "postgres" }}
          - secret:
              name: {{ include "mssante-connector.storeSecretName" . }}
              items:
                - key: {{ .Values.store.postgres.secretKey }}
                  path: dsn
          {{- end }}
          {{- if .Values.store.encryption.enabled }}
          - secret:
              name: {{ include "mssante-connector.encryptionSecretName" . }}
              items:
                - key: {{ .Values.store.encryption.secretKey }}
                  path: payload-keys
          {{- end }}
    {{- end }}
    {{- range $tenant := .Values.tenants }}
    {{- $secretName := include "mssante-connector.tenantSecretName" (list $ $tenant) }}
    {{- if $secretName }}
    - name: {{ printf "certs-%s" $tenant.id }}
      secret:
        secretName: {{ $secretName }}
        defaultMode: 0440
    {{- end }}
    {{- end }}
    {{- with .Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
