{{/* Names, labels and the env every revsync pod shares. */}}

{{- define "revsync.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "revsync.fullname" -}}
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

{{- define "revsync.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "revsync.selectorLabels" -}}
app.kubernetes.io/name: {{ include "revsync.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "revsync.labels" -}}
helm.sh/chart: {{ include "revsync.chart" . }}
{{ include "revsync.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: revsync
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
The services, in one place: the values key, the name `revsync run` takes, and for the three
consumers the consumer group (the catalog's consumer name) they join. The other two are
sources with no group (no KEDA, no consumer settings): replicas elect a leader through a
PostgreSQL advisory lock and the others stand by.
*/}}
{{- define "revsync.catalog" -}}
orderSync:
  name: order-sync
  group: order-sync
invoiceSync:
  name: invoice-sync
  group: invoice-sync
fulfillmentSync:
  name: fulfillment-sync
  group: fulfillment-sync
erpOutboxPublisher:
  name: erp-outbox-publisher
  group: ""
crmCdcBridge:
  name: crm-cdc-bridge
  group: ""
{{- end -}}

{{/* Component object name: (dict "root" $ "name" "order-sync") */}}
{{- define "revsync.componentName" -}}
{{- printf "%s-%s" (include "revsync.fullname" .root) .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "revsync.componentSelectorLabels" -}}
{{ include "revsync.selectorLabels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "revsync.componentLabels" -}}
{{ include "revsync.labels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "revsync.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "revsync.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "revsync.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "revsync.credentialsSecret" -}}
{{- default (printf "%s-credentials" (include "revsync.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "revsync.isSasl" -}}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol }}true{{ end -}}
{{- end -}}

{{- define "revsync.isTls" -}}
{{- if has .Values.kafka.securityProtocol (list "SSL" "SASL_SSL") }}true{{ end -}}
{{- end -}}

{{/* Refuse what revsync itself would refuse at start-up, naming the value to change. */}}
{{- define "revsync.validate" -}}
{{- if and (not (include "revsync.isTls" .)) (or .Values.kafka.tls.caSecret .Values.kafka.tls.clientCertSecret) -}}
{{- fail (printf "kafka.tls.caSecret/clientCertSecret need kafka.securityProtocol SSL or SASL_SSL, not %s" .Values.kafka.securityProtocol) -}}
{{- end -}}
{{- range $property, $_ := .Values.kafka.properties -}}
{{- if or (eq $property "bootstrap.servers") (eq $property "security.protocol") (hasPrefix "sasl." $property) (hasPrefix "ssl." $property) -}}
{{- fail (printf "kafka.properties.%s: set it through kafka.bootstrapServers, kafka.securityProtocol, kafka.sasl or kafka.tls (secrets in the credentials Secret)" $property) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.secrets.create .Values.secrets.existingSecret -}}
{{- fail "secrets.create and secrets.existingSecret exclude each other: the chart would render a Secret you already have" -}}
{{- end -}}
{{- end -}}

{{/*
A secretKeyRef env var: (dict "root" $ "env" "REVSYNC_X" "ref" .Values.secrets.keys.x
"optional" true "secretName" "<instead of the credentials Secret>"); a ref's own secret wins.
*/}}
{{- define "revsync.secretEnv" -}}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ .ref.secret | default .secretName | default (include "revsync.credentialsSecret" .root) }}
      key: {{ .ref.key }}
      {{- if .optional }}
      optional: true
      {{- end }}
{{- end -}}

{{/*
The Kafka and registry settings, as env: what every pod (the governance Job too) needs to reach
the cluster. The Job renders these itself because it runs before the ConfigMap exists.
*/}}
{{- define "revsync.clusterConfig" -}}
{{- $v := .Values -}}
{{- if $v.kafka.bootstrapServers }}
REVSYNC_BOOTSTRAP_SERVERS: {{ $v.kafka.bootstrapServers | quote }}
{{- end }}
{{- if $v.schemaRegistry.url }}
REVSYNC_SCHEMA_REGISTRY_URL: {{ $v.schemaRegistry.url | quote }}
{{- end }}
{{- if ne $v.kafka.securityProtocol "PLAINTEXT" }}
REVSYNC_KAFKA_SECURITY_PROTOCOL: {{ $v.kafka.securityProtocol | quote }}
{{- end }}
{{- if include "revsync.isSasl" . }}
REVSYNC_KAFKA_SASL_MECHANISM: {{ $v.kafka.sasl.mechanism | quote }}
{{- with $v.kafka.sasl.username }}
REVSYNC_KAFKA_SASL_USERNAME: {{ . | quote }}
{{- end }}
{{- end }}
{{- if and (include "revsync.isTls" .) $v.kafka.tls.caSecret }}
REVSYNC_KAFKA_SSL_CA_LOCATION: {{ printf "/etc/revsync/kafka-ca/%s" $v.kafka.tls.caKey | quote }}
{{- end }}
{{- if and (include "revsync.isTls" .) $v.kafka.tls.clientCertSecret }}
REVSYNC_KAFKA_SSL_CERTIFICATE_LOCATION: "/etc/revsync/kafka-client/tls.crt"
REVSYNC_KAFKA_SSL_KEY_LOCATION: "/etc/revsync/kafka-client/tls.key"
{{- end }}
{{- range $property, $value := $v.kafka.properties }}
{{ printf "REVSYNC_KAFKA_%s" ($property | replace "." "_" | upper) }}: {{ $value | toString | quote }}
{{- end }}
{{- end -}}

{{/*
The cluster credentials, as secretKeyRef env (rendered only where they apply):
(dict "root" $ "secretName" "<Secret to read instead of the credentials Secret>")
*/}}
{{- define "revsync.clusterSecretEnv" -}}
{{- $root := .root -}}
{{- $keys := $root.Values.secrets.keys -}}
{{- $secretName := .secretName -}}
{{ include "revsync.secretEnv" (dict "root" $root "secretName" $secretName "env" "REVSYNC_SCHEMA_REGISTRY_BASIC_AUTH" "ref" $keys.schemaRegistryBasicAuth "optional" true) }}
{{- if include "revsync.isSasl" $root }}
{{- if not $root.Values.kafka.sasl.username }}
{{ include "revsync.secretEnv" (dict "root" $root "secretName" $secretName "env" "REVSYNC_KAFKA_SASL_USERNAME" "ref" $keys.kafkaSaslUsername) }}
{{- end }}
{{ include "revsync.secretEnv" (dict "root" $root "secretName" $secretName "env" "REVSYNC_KAFKA_SASL_PASSWORD" "ref" $keys.kafkaSaslPassword) }}
{{- end }}
{{- if and (include "revsync.isTls" $root) $root.Values.kafka.tls.clientCertSecret }}
{{ include "revsync.secretEnv" (dict "root" $root "secretName" $secretName "env" "REVSYNC_KAFKA_SSL_KEY_PASSWORD" "ref" $keys.kafkaSslKeyPassword "optional" true) }}
{{- end }}
{{- end -}}

{{/* Kafka TLS volumes and their mounts. */}}
{{- define "revsync.tlsVolumes" -}}
{{- if and (include "revsync.isTls" .) .Values.kafka.tls.caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ .Values.kafka.tls.caSecret }}
    items:
      - key: {{ .Values.kafka.tls.caKey }}
        path: {{ .Values.kafka.tls.caKey }}
{{- end }}
{{- if and (include "revsync.isTls" .) .Values.kafka.tls.clientCertSecret }}
- name: kafka-client
  secret:
    secretName: {{ .Values.kafka.tls.clientCertSecret }}
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
{{- end }}
{{- end -}}

{{- define "revsync.tlsVolumeMounts" -}}
{{- if and (include "revsync.isTls" .) .Values.kafka.tls.caSecret }}
- name: kafka-ca
  mountPath: /etc/revsync/kafka-ca
  readOnly: true
{{- end }}
{{- if and (include "revsync.isTls" .) .Values.kafka.tls.clientCertSecret }}
- name: kafka-client
  mountPath: /etc/revsync/kafka-client
  readOnly: true
{{- end }}
{{- end -}}

{{/* Pod-level settings every revsync pod shares. */}}
{{- define "revsync.podCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- /* Service links would inject REVSYNC_*_SERVICE_HOST variables, which revsync refuses. */}}
enableServiceLinks: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
