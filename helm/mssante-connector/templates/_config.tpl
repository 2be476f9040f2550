{{/* The connector's TOML configuration, rendered from the values (mounted by configmap.yaml at
/etc/mssante-connector/connector.toml). Keys the values leave unset are not written: the connector
applies its own defaults. */}}
{{- define "mssante-connector.connectorToml" -}}
{{- $dataDir := include "mssante-connector.dataDir" . -}}
{{- $secretsDir := include "mssante-connector.secretsDir" . -}}
# Rendered by the mssante-connector Helm chart from its values: edit the values, not this file.
data_dir = {{ $dataDir | toJson }}
{{- include "mssante-connector.toml.str" (list "default_charset" .Values.config "defaultCharset") }}

[logging]
{{- include "mssante-connector.toml.str" (list "format" .Values.config.logging "format") }}
{{- include "mssante-connector.toml.str" (list "level" .Values.config.logging "level") }}
{{- if .Values.config.documentProcesses }}

[intake]
{{- include "mssante-connector.toml.int" (list "document_processes" .Values.config "documentProcesses") }}
{{- end }}

[admin]
{{- include "mssante-connector.toml.str" (list "host" .Values.config.admin "host") }}
{{- include "mssante-connector.toml.int" (list "port" .Values.config.admin "port") }}

[store]
backend = {{ .Values.store.backend | toJson }}
{{- if eq .Values.store.backend "sqlite" }}
path = {{ printf "%s/connector.db" $dataDir | toJson }}
{{- else }}
dsn_file = {{ printf "%s/dsn" $secretsDir | toJson }}
{{- end }}
{{- include "mssante-connector.toml.int" (list "retransmission_window_seconds" .Values.store "retransmissionWindowSeconds") }}
{{- include "mssante-connector.toml.int" (list "payload_retention_days" .Values.store "payloadRetentionDays") }}
{{- include "mssante-connector.toml.int" (list "patient_context_retention_days" .Values.store "patientContextRetentionDays") }}
{{- if .Values.store.encryption.enabled }}
[store.encryption]
current_key_id = {{ .Values.store.encryption.currentKeyId | toString | toJson }}
keys_file = {{ printf "%s/payload-keys" $secretsDir | toJson }}
{{- end }}
{{- with .Values.config.validation }}
{{- if .cdaXsd }}

[validation]
{{- include "mssante-connector.toml.str" (list "cda_xsd" . "cdaXsd") }}
{{- include "mssante-connector.toml.str" (list "schematron" . "schematron") }}
{{- include "mssante-connector.toml.str" (list "schematron_phase" . "schematronPhase") }}
{{- end }}
{{- end }}
{{- if .Values.config.directory.whitelist }}

[directory]
whitelist = {{ .Values.config.directory.whitelist | toJson }}
{{- end }}
{{- range $tenant := .Values.tenants }}
{{- $id := $tenant.id }}

[[tenants]]
id = {{ $id | toJson }}
{{- include "mssante-connector.toml.str" (list "name" $tenant "name") }}
{{- include "mssante-connector.toml.str" (list "finess" $tenant "finess") }}
{{- include "mssante-connector.toml.str" (list "oid" $tenant "oid") }}
{{- include "mssante-connector.toml.str" (list "application" $tenant "application") }}
{{- include "mssante-connector.toml.str" (list "facility" $tenant "facility") }}
{{- range $listener := index $tenant "listeners" }}

[[tenants.listeners]]
{{- include "mssante-connector.toml.str" (list "name" $listener "name") }}
host = {{ default "0.0.0.0" (index $listener "host") | toJson }}
port = {{ default 2575 (index $listener "port") | int64 }}
{{- include "mssante-connector.toml.str" (list "charset" $listener "charset") }}
{{- include "mssante-connector.toml.int" (list "max_frame_bytes" $listener "maxFrameBytes") }}
{{- include "mssante-connector.toml.number" (list "idle_timeout_seconds" $listener "idleTimeoutSeconds") }}
{{- include "mssante-connector.toml.int" (list "max_connections" $listener "maxConnections") }}
{{- include "mssante-connector.toml.str" (list "enhanced_ack" $listener "enhancedAck") }}
{{- with index $listener "allowFrom" }}
allow_from = {{ toJson . }}
{{- end }}
{{- $tls := default (dict) (index $listener "tls") }}
{{- if index $tls "enabled" }}
[tenants.listeners.tls]
{{- include "mssante-connector.toml.file" (list "certificate" $tls "certificate" $id) }}
{{- include "mssante-connector.toml.file" (list "private_key" $tls "privateKey" $id) }}
{{- include "mssante-connector.toml.file" (list "private_key_password_file" $tls "privateKeyPasswordFile" $id) }}
{{- include "mssante-connector.toml.file" (list "client_ca" $tls "clientCa" $id) }}
{{- end }}
{{- end }}
{{- with index $tenant "mailbox" }}

[tenants.mailbox]
{{- include "mssante-connector.toml.str" (list "address" . "address") }}
{{- include "mssante-connector.toml.str" (list "display_name" . "displayName") }}
{{- include "mssante-connector.toml.str" (list "nil" . "nil") }}
{{- include "mssante-connector.toml.str" (list "contact" . "contact") }}
{{- end }}
{{- with index $tenant "cisis" }}

[tenants.cisis]
{{- include "mssante-connector.toml.str" (list "schematron_policy" . "schematronPolicy") }}
{{- include "mssante-connector.toml.str" (list "unknown_original" . "unknownOriginal") }}
{{- include "mssante-connector.toml.str" (list "sending_matrix" . "sendingMatrix") }}
{{- include "mssante-connector.toml.bool" (list "partial_sending" . "partialSending") }}
{{- include "mssante-connector.toml.str" (list "missing_pdf" . "missingPdf") }}
{{- end }}
{{- $transport := default (dict) (index $tenant "transport") }}

[tenants.transport]
kind = {{ default "maildir" (index $transport "kind") | toJson }}
{{- if eq (default "maildir" (index $transport "kind")) "smtp" }}
{{- $smtp := default (dict) (index $transport "smtp") }}
{{- include "mssante-connector.toml.str" (list "host" $smtp "host") }}
{{- include "mssante-connector.toml.int" (list "port" $smtp "port") }}
{{- include "mssante-connector.toml.str" (list "tls" $smtp "tls") }}
{{- include "mssante-connector.toml.file" (list "ca_bundle" $smtp "caBundle" $id) }}
{{- include "mssante-connector.toml.files" (list "crl_files" $smtp "crlFiles" $id) }}
{{- if index $smtp "clientPkcs12" }}
{{- include "mssante-connector.toml.file" (list "client_pkcs12" $smtp "clientPkcs12" $id) }}
{{- include "mssante-connector.toml.file" (list "client_pkcs12_password_file" $smtp "clientPkcs12PasswordFile" $id) }}
{{- else }}
{{- include "mssante-connector.toml.file" (list "client_certificate" $smtp "clientCertificate" $id) }}
{{- include "mssante-connector.toml.file" (list "client_private_key" $smtp "clientPrivateKey" $id) }}
{{- include "mssante-connector.toml.file" (list "client_private_key_password_file" $smtp "clientPrivateKeyPasswordFile" $id) }}
{{- end }}
{{- include "mssante-connector.toml.str" (list "sasl" $smtp "sasl") }}
{{- include "mssante-connector.toml.str" (list "username" $smtp "username") }}
{{- include "mssante-connector.toml.file" (list "password_file" $smtp "passwordFile" $id) }}
{{- include "mssante-connector.toml.file" (list "oauth_token_file" $smtp "oauthTokenFile" $id) }}
{{- include "mssante-connector.toml.str" (list "local_hostname" $smtp "localHostname") }}
{{- include "mssante-connector.toml.number" (list "connect_timeout_seconds" $smtp "connectTimeoutSeconds") }}
{{- include "mssante-connector.toml.number" (list "command_timeout_seconds" $smtp "commandTimeoutSeconds") }}
{{- include "mssante-connector.toml.number" (list "data_timeout_seconds" $smtp "dataTimeoutSeconds") }}
{{- end }}
{{- $receipts := default (dict) (index $tenant "receipts") }}
{{- if index $receipts "host" }}

[tenants.receipts]
{{- include "mssante-connector.toml.str" (list "host" $receipts "host") }}
{{- include "mssante-connector.toml.int" (list "port" $receipts "port") }}
{{- include "mssante-connector.toml.str" (list "tls" $receipts "tls") }}
{{- include "mssante-connector.toml.file" (list "ca_bundle" $receipts "caBundle" $id) }}
{{- include "mssante-connector.toml.files" (list "crl_files" $receipts "crlFiles" $id) }}
{{- if index $receipts "clientPkcs12" }}
{{- include "mssante-connector.toml.file" (list "client_pkcs12" $receipts "clientPkcs12" $id) }}
{{- include "mssante-connector.toml.file" (list "client_pkcs12_password_file" $receipts "clientPkcs12PasswordFile" $id) }}
{{- else }}
{{- include "mssante-connector.toml.file" (list "client_certificate" $receipts "clientCertificate" $id) }}
{{- include "mssante-connector.toml.file" (list "client_private_key" $receipts "clientPrivateKey" $id) }}
{{- include "mssante-connector.toml.file" (list "client_private_key_password_file" $receipts "clientPrivateKeyPasswordFile" $id) }}
{{- end }}
{{- include "mssante-connector.toml.str" (list "username" $receipts "username") }}
{{- include "mssante-connector.toml.file" (list "password_file" $receipts "passwordFile" $id) }}
{{- include "mssante-connector.toml.str" (list "mailbox" $receipts "mailbox") }}
{{- include "mssante-connector.toml.str" (list "processed_folder" $receipts "processedFolder") }}
{{- include "mssante-connector.toml.str" (list "unmatched_folder" $receipts "unmatchedFolder") }}
{{- include "mssante-connector.toml.number" (list "idle_seconds" $receipts "idleSeconds") }}
{{- include "mssante-connector.toml.number" (list "poll_seconds" $receipts "pollSeconds") }}
{{- include "mssante-connector.toml.number" (list "timeout_seconds" $receipts "timeoutSeconds") }}
{{- include "mssante-connector.toml.number" (list "final_report_timeout_hours" $receipts "finalReportTimeoutHours") }}
{{- end }}
{{- $his := default (dict) (index $tenant "his") }}
{{- if index $his "host" }}

[tenants.his]
{{- include "mssante-connector.toml.str" (list "host" $his "host") }}
{{- include "mssante-connector.toml.int" (list "port" $his "port") }}
{{- include "mssante-connector.toml.number" (list "timeout_seconds" $his "timeoutSeconds") }}
{{- include "mssante-connector.toml.file" (list "ca_bundle" $his "caBundle" $id) }}
{{- include "mssante-connector.toml.file" (list "client_certificate" $his "clientCertificate" $id) }}
{{- include "mssante-connector.toml.file" (list "client_private_key" $his "clientPrivateKey" $id) }}
{{- end }}
{{- with index $tenant "delivery" }}

[tenants.delivery]
{{- include "mssante-connector.toml.int" (list "concurrency" . "concurrency") }}
{{- include "mssante-connector.toml.int" (list "batch_size" . "batchSize") }}
{{- include "mssante-connector.toml.number" (list "rate_per_second" . "ratePerSecond") }}
{{- include "mssante-connector.toml.number" (list "lease_seconds" . "leaseSeconds") }}
{{- include "mssante-connector.toml.number" (list "poll_seconds" . "pollSeconds") }}
{{- include "mssante-connector.toml.number" (list "config_error_pause_seconds" . "configErrorPauseSeconds") }}
{{- include "mssante-connector.toml.number" (list "retry_initial_seconds" . "retryInitialSeconds") }}
{{- include "mssante-connector.toml.number" (list "retry_maximum_seconds" . "retryMaximumSeconds") }}
{{- include "mssante-connector.toml.number" (list "retry_factor" . "retryFactor") }}
{{- include "mssante-connector.toml.number" (list "retry_jitter" . "retryJitter") }}
{{- include "mssante-connector.toml.number" (list "retry_budget_hours" . "retryBudgetHours") }}
{{- end }}
{{- end }}
{{- end -}}
