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
The services, in one place: the values key, the name `revsync run` takes, and for the four
consumers the consumer group (the catalog's consumer name) they join. The publisher and the
CDC bridge are sources with no group (no KEDA, no consumer settings): replicas elect a leader
through a PostgreSQL advisory lock and the others stand by. The process API and erp-inbound
have no group either: each serves HTTP on a port of its own (port: the container port's name;
its number, Service port and optional Ingress in its values) and every replica answers; the
process API is ready when that port answers (readyOnPort), erp-inbound when its health port
says so. Then what each calls besides Kafka, the registry and PostgreSQL (its wiring,
services/<package>/service.py): Salesforce (crm; the CDC bridge its Pub/Sub API too), the
ERPs' APIs (erp: the reference ERP's, NetSuite's or Business Central's, whichever are in use),
the reference ERP's outbox database (erpOutbox: deployed only while the reference ERP is in
use), NetSuite's and Business Central's APIs alone (erpInbound: deployed only while one of them
is in use), the identity provider whose tokens it verifies (oidc). Its credentials and its
NetworkPolicy follow from these, and from nothing else.
*/}}
{{- define "revsync.catalog" -}}
orderSync:
  name: order-sync
  group: order-sync
  crm: true
  erp: true
invoiceSync:
  name: invoice-sync
  group: invoice-sync
  crm: true
fulfillmentSync:
  name: fulfillment-sync
  group: fulfillment-sync
  crm: true
customerSync:
  name: customer-sync
  group: customer-sync
  crm: true
  erp: true
processApi:
  name: process-api
  group: ""
  erp: true
  oidc: true
  port: api
  readyOnPort: true
erpInbound:
  name: erp-inbound
  group: ""
  erpInbound: true
  port: receiver
erpOutboxPublisher:
  name: erp-outbox-publisher
  group: ""
  erpOutbox: true
crmCdcBridge:
  name: crm-cdc-bridge
  group: ""
  crm: true
  pubsub: true
{{- end -}}

{{/* The ERPs in use, a YAML list: those erp.routes names, else erp.system. */}}
{{- define "revsync.erpSystems" -}}
{{- if .Values.erp.routes -}}
{{- values .Values.erp.routes | uniq | sortAlpha | toYaml -}}
{{- else -}}
{{- list .Values.erp.system | toYaml -}}
{{- end -}}
{{- end -}}

{{/* "true" while an ERP reached through its API (NetSuite, Business Central) is in use. */}}
{{- define "revsync.apiErp" -}}
{{- $systems := include "revsync.erpSystems" . | fromYamlArray -}}
{{- if or (has "netsuite" $systems) (has "business-central" $systems) }}true{{ end -}}
{{- end -}}

{{/*
The services deployed, by values key: those enabled, less the one whose kind of ERP is not in
use: the outbox publisher without the reference ERP, erp-inbound without NetSuite or Business
Central.
*/}}
{{- define "revsync.deployed" -}}
{{- $systems := include "revsync.erpSystems" . | fromYamlArray -}}
{{- $apiErp := include "revsync.apiErp" . -}}
{{- range $key, $meta := include "revsync.catalog" . | fromYaml }}
{{- if and (index $.Values.services $key).enabled (or (not $meta.erpOutbox) (has "reference" $systems)) (or (not $meta.erpInbound) $apiErp) }}
- {{ $key }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
Business Central's notifications URL: erp.businessCentral.notificationUrl, else the receiver's
path on services.erpInbound.ingress.host with the Ingress, else empty.
*/}}
{{- define "revsync.businessCentralNotificationUrl" -}}
{{- $ingress := .Values.services.erpInbound.ingress -}}
{{- if .Values.erp.businessCentral.notificationUrl -}}
{{- .Values.erp.businessCentral.notificationUrl -}}
{{- else if and $ingress.enabled $ingress.host -}}
{{- printf "https://%s/erp/business-central/notifications" $ingress.host -}}
{{- end -}}
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
{{- fail (printf "kafka.properties.%s: set it through kafka.bootstrapServers, kafka.securityProtocol, kafka.sasl or kafka.tls (secrets in each principal's Secret)" $property) -}}
{{- end -}}
{{- end -}}
{{- /* A principal per component: two sharing a Secret or a Kafka user would share their grants. */ -}}
{{- $secrets := dict -}}
{{- $users := dict -}}
{{- range $component := include "revsync.components" . | fromYamlArray -}}
{{- $ctx := dict "root" $ "component" $component -}}
{{- $secret := include "revsync.secretName" $ctx -}}
{{- with index $secrets $secret -}}
{{- fail (printf "%s and %s both read the Secret %s; each has its own (see credentials.secret)" . $component $secret) -}}
{{- end -}}
{{- $_ := set $secrets $secret $component -}}
{{- with include "revsync.kafkaUser" $ctx -}}
{{- $user := . -}}
{{- with index $users $user -}}
{{- fail (printf "%s and %s both authenticate to Kafka as %s; each has its own user (credentials.kafkaUser)" . $component $user) -}}
{{- end -}}
{{- $_ := set $users $user $component -}}
{{- end -}}
{{- end -}}
{{- $deployed := include "revsync.deployed" . | fromYamlArray -}}
{{- /* The process API and erp-inbound: their own port, Service port and Ingress. */ -}}
{{- range $key := list "processApi" "erpInbound" -}}
{{- with index $.Values.services $key -}}
{{- if has $key $deployed -}}
{{- if eq (int .port) (int $.Values.healthPort) -}}
{{- fail (printf "services.%s.port and healthPort are both %v; its HTTP server and the health server each need a port of their own" $key .port) -}}
{{- end -}}
{{- if eq (int .service.port) (int $.Values.service.port) -}}
{{- fail (printf "services.%s.service.port and service.port are both %v; its Service carries its own port and the health port, each on a port of its own" $key .service.port) -}}
{{- end -}}
{{- if and .ingress.enabled (not .ingress.host) -}}
{{- fail (printf "services.%s.ingress.enabled needs services.%s.ingress.host, its host name" $key $key) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- with .Values.services.processApi -}}
{{- if has "processApi" $deployed -}}
{{- if and (or .oidc.issuer .oidc.audience) (not (and .oidc.issuer .oidc.audience)) -}}
{{- fail "services.processApi.oidc.issuer and services.processApi.oidc.audience go together" -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- /* As revsync's ErpSettings: routes or one system, never both. */ -}}
{{- if and .Values.erp.routes (ne .Values.erp.system "reference") -}}
{{- fail (printf "erp.system (%s) and erp.routes both choose ERPs; set one of them (with routes, leave system at reference)" .Values.erp.system) -}}
{{- end -}}
{{- if .Values.console.enabled -}}
{{- if and .Values.console.ingress.enabled (not .Values.console.ingress.host) -}}
{{- fail "console.ingress.enabled needs console.ingress.host, the console's host name" -}}
{{- end -}}
{{- if and (or .Values.console.oidc.issuer .Values.console.oidc.clientId) (not (and .Values.console.oidc.issuer .Values.console.oidc.clientId)) -}}
{{- fail "console.oidc.issuer and console.oidc.clientId go together" -}}
{{- end -}}
{{- end -}}
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
{{- if $v.schemaRegistry.caSecret }}
REVSYNC_SCHEMA_REGISTRY_CA_LOCATION: {{ printf "/etc/revsync/registry-ca/%s" $v.schemaRegistry.caKey | quote }}
{{- end }}
{{- if ne $v.kafka.securityProtocol "PLAINTEXT" }}
REVSYNC_KAFKA_SECURITY_PROTOCOL: {{ $v.kafka.securityProtocol | quote }}
{{- end }}
{{- if include "revsync.isSasl" . }}
REVSYNC_KAFKA_SASL_MECHANISM: {{ $v.kafka.sasl.mechanism | quote }}
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
Who holds credentials, each its own principal: the services by their values key, the console
(the operators' PostgreSQL role and Kafka user), the governance Job's steps that speak to Kafka
and the registry (revsync-governance), and its `revsync db migrate` step (the PostgreSQL role
that owns the tables).
*/}}
{{- define "revsync.components" -}}
{{- range include "revsync.deployed" . | fromYamlArray }}
- {{ . }}
{{- end }}
{{- if .Values.console.enabled }}
- console
{{- end }}
{{- if .Values.governance.enabled }}
- governance
- migrations
{{- end }}
{{- end -}}

{{/* A component's values: (dict "root" $ "component" "orderSync"). */}}
{{- define "revsync.componentValues" -}}
{{- $v := .root.Values -}}
{{- if eq .component "governance" -}}
{{- toYaml $v.governance -}}
{{- else if eq .component "migrations" -}}
{{- toYaml $v.governance.migrations -}}
{{- else if eq .component "console" -}}
{{- toYaml $v.console -}}
{{- else -}}
{{- toYaml (index $v.services .component) -}}
{{- end -}}
{{- end -}}

{{/* A component's Secret: its credentials.secret, else "<fullname>-<component>-credentials". */}}
{{- define "revsync.secretName" -}}
{{- $values := include "revsync.componentValues" . | fromYaml -}}
{{- $name := .component -}}
{{- with index (include "revsync.catalog" .root | fromYaml) .component }}{{ $name = .name }}{{ end -}}
{{- $values.credentials.secret | default (printf "%s-credentials" (include "revsync.componentName" (dict "root" .root "name" $name))) -}}
{{- end -}}

{{/* A component's Kafka SASL user; empty for the migrations, which never speak to Kafka. */}}
{{- define "revsync.kafkaUser" -}}
{{- $values := include "revsync.componentValues" . | fromYaml -}}
{{- $values.credentials.kafkaUser | default "" -}}
{{- end -}}

{{/*
The credentials a component reads from its Secret, and nothing more: the variable each sets,
its key, whether it may be absent. (dict "root" $ "component" "orderSync")
*/}}
{{- define "revsync.credentials" -}}
{{- $root := .root -}}
{{- $keys := $root.Values.secrets.keys -}}
{{- $calls := index (include "revsync.catalog" $root | fromYaml) .component | default dict -}}
{{- if ne .component "governance" }}
- env: REVSYNC_POSTGRES_DSN
  key: {{ $keys.postgresDsn | quote }}
{{- end }}
{{- if ne .component "migrations" }}
- env: REVSYNC_SCHEMA_REGISTRY_BASIC_AUTH
  key: {{ $keys.schemaRegistryBasicAuth | quote }}
  optional: true
{{- if include "revsync.isSasl" $root }}
- env: REVSYNC_KAFKA_SASL_PASSWORD
  key: {{ $keys.kafkaSaslPassword | quote }}
{{- end }}
{{- if and (include "revsync.isTls" $root) $root.Values.kafka.tls.clientCertSecret }}
- env: REVSYNC_KAFKA_SSL_KEY_PASSWORD
  key: {{ $keys.kafkaSslKeyPassword | quote }}
  optional: true
{{- end }}
{{- end }}
{{- if $calls.crm }}
- env: REVSYNC_CRM_CLIENT_SECRET
  key: {{ $keys.crmClientSecret | quote }}
{{- end }}
{{- /* Each ERP's credential only while that ERP is in use; the webhook secrets only erp-inbound's. */}}
{{- $systems := include "revsync.erpSystems" $root | fromYamlArray }}
{{- if and $calls.erp (has "reference" $systems) }}
- env: REVSYNC_ERP_API_TOKEN
  key: {{ $keys.erpApiToken | quote }}
{{- end }}
{{- if and (or $calls.erp $calls.erpInbound) (has "netsuite" $systems) }}
- env: REVSYNC_NETSUITE_PRIVATE_KEY
  key: {{ $keys.netsuitePrivateKey | quote }}
{{- end }}
{{- if and $calls.erpInbound (has "netsuite" $systems) }}
- env: REVSYNC_NETSUITE_AFTER_SUBMIT_SECRET
  key: {{ $keys.netsuiteAfterSubmitSecret | quote }}
  optional: true
{{- end }}
{{- if and (or $calls.erp $calls.erpInbound) (has "business-central" $systems) }}
- env: REVSYNC_BUSINESS_CENTRAL_CLIENT_SECRET
  key: {{ $keys.businessCentralClientSecret | quote }}
{{- end }}
{{- if and $calls.erpInbound (has "business-central" $systems) }}
- env: REVSYNC_BUSINESS_CENTRAL_CLIENT_STATE
  key: {{ $keys.businessCentralClientState | quote }}
{{- end }}
{{- if $calls.erpOutbox }}
- env: REVSYNC_ERP_OUTBOX_DSN
  key: {{ $keys.erpOutboxDsn | quote }}
  optional: true
{{- end }}
{{- if eq .component "console" }}
- env: REVSYNC_CONSOLE_SESSION_SECRET
  key: {{ $keys.consoleSessionSecret | quote }}
{{- if $root.Values.console.oidc.issuer }}
- env: REVSYNC_CONSOLE_OIDC_CLIENT_SECRET
  key: {{ $keys.consoleOidcClientSecret | quote }}
  optional: true
{{- end }}
{{- end }}
{{- end -}}

{{/*
A component's identity and credentials as env: its Kafka user (not secret), then, with
secrets.mode files, only REVSYNC_SECRETS_DIR (the credentials are files there, see
revsync.credentialsVolume); with env, a secretKeyRef per credential.
(dict "root" $ "component" "orderSync")
*/}}
{{- define "revsync.credentialsEnv" -}}
{{- $secret := include "revsync.secretName" . -}}
{{- with include "revsync.kafkaUser" . }}
{{- if include "revsync.isSasl" $.root }}
- name: REVSYNC_KAFKA_SASL_USERNAME
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- if eq .root.Values.secrets.mode "files" }}
- name: REVSYNC_SECRETS_DIR
  value: /etc/revsync/secrets
{{- else }}
{{- range include "revsync.credentials" . | fromYamlArray }}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .key }}
      {{- if .optional }}
      optional: true
      {{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
With secrets.mode files, a component's credentials as a projected volume: each key of its
Secret becomes a file named after the variable it sets, which is how revsync reads
REVSYNC_SECRETS_DIR. Keys that may be absent come in a source of their own, marked optional.
(dict "root" $ "component" "orderSync" "volume" "<volume name>")
*/}}
{{- define "revsync.credentialsVolume" -}}
{{- if eq .root.Values.secrets.mode "files" }}
{{- $secret := include "revsync.secretName" . -}}
{{- $required := list -}}
{{- $optional := list -}}
{{- range include "revsync.credentials" . | fromYamlArray -}}
{{- if .optional -}}
{{- $optional = append $optional (dict "key" .key "path" .env) -}}
{{- else -}}
{{- $required = append $required (dict "key" .key "path" .env) -}}
{{- end -}}
{{- end }}
- name: {{ .volume }}
  projected:
    # 0440: the files are root's, readable by the pod's fsGroup (revsync's group), no other.
    defaultMode: 288
    sources:
      {{- with $required }}
      - secret:
          name: {{ $secret }}
          items:
            {{- toYaml . | nindent 12 }}
      {{- end }}
      {{- with $optional }}
      - secret:
          name: {{ $secret }}
          optional: true
          items:
            {{- toYaml . | nindent 12 }}
      {{- end }}
{{- end }}
{{- end -}}

{{- define "revsync.credentialsVolumeMount" -}}
{{- if eq .root.Values.secrets.mode "files" }}
- name: {{ .volume }}
  mountPath: /etc/revsync/secrets
  readOnly: true
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
{{- if .Values.schemaRegistry.caSecret }}
- name: registry-ca
  secret:
    secretName: {{ .Values.schemaRegistry.caSecret }}
    items:
      - key: {{ .Values.schemaRegistry.caKey }}
        path: {{ .Values.schemaRegistry.caKey }}
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
{{- if .Values.schemaRegistry.caSecret }}
- name: registry-ca
  mountPath: /etc/revsync/registry-ca
  readOnly: true
{{- end }}
{{- if and (include "revsync.isTls" .) .Values.kafka.tls.clientCertSecret }}
- name: kafka-client
  mountPath: /etc/revsync/kafka-client
  readOnly: true
{{- end }}
{{- end -}}

{{/* The console's external URL: console.publicUrl, else https://<host> with the Ingress, else empty. */}}
{{- define "revsync.consolePublicUrl" -}}
{{- $console := .Values.console -}}
{{- if $console.publicUrl -}}
{{- $console.publicUrl -}}
{{- else if and $console.ingress.enabled $console.ingress.host -}}
{{- printf "https://%s" $console.ingress.host -}}
{{- end -}}
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

{{/*
One egress rule of a NetworkPolicy: (dict "name" "Kafka" "rule" .Values.networkPolicy.egress.kafka).
Without peers it admits any address, on its ports only.
*/}}
{{- define "revsync.egressRule" -}}
# {{ .name }}
{{- if .rule.to }}
- to:
    {{- toYaml .rule.to | nindent 4 }}
  ports:
{{- else }}
- ports:
{{- end }}
    {{- toYaml .rule.ports | nindent 4 }}
{{- end -}}
