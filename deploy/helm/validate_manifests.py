"""Validates rendered chart manifests offline: Kubernetes kinds against the schemas that
kubernetes-validate ships (strict: unknown fields fail), the chart's two CRDs against the local
schemas in ``schemas/``, and the rules the chart promises of every revsync pod: its security
context, its settings, its own credentials, NetworkPolicies that fence it in, and Services and
Ingresses that reach it on a port it serves and its policy admits.

Usage: validate_manifests.py --kube-version 1.27 [--kube-version 1.37]
       [--known-env FILE] [--dashboard FILE] MANIFEST...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from kubernetes_validate import utils as kv

HERE = Path(__file__).resolve().parent
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): HERE / "schemas" / "servicemonitor-v1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): HERE / "schemas" / "scaledobject-v1alpha1.json",
}
POD_KINDS = {"Deployment", "Job", "Pod"}
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")
COMPONENT = "app.kubernetes.io/component"
SECRETS_DIR = "REVSYNC_SECRETS_DIR"


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]
    return spec if doc["kind"] == "Pod" else spec["template"]["spec"]


def pod_labels(doc: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = (
        doc["metadata"] if doc["kind"] == "Pod" else doc["spec"]["template"]["metadata"]
    ).get("labels", {})
    return labels


def revsync_setting(name: str, known_env: set[str] | None) -> bool:
    return (
        known_env is None
        or not name.startswith("REVSYNC_")
        or name.startswith("REVSYNC_KAFKA_")
        or name in known_env
    )


def credential_secrets(spec: dict[str, Any]) -> set[str]:
    """The Secrets a pod reads credentials from: secretKeyRef variables and projected volumes
    (not the Kafka TLS material, which every pod mounts as a plain secret volume)."""
    names = {
        env["valueFrom"]["secretKeyRef"]["name"]
        for container in spec.get("initContainers", []) + spec["containers"]
        for env in container.get("env", [])
        if "secretKeyRef" in env.get("valueFrom", {})
    }
    names |= {
        source["secret"]["name"]
        for volume in spec.get("volumes", [])
        for source in volume.get("projected", {}).get("sources", [])
        if "secret" in source
    }
    return names


def policy_problems(doc: dict[str, Any], known_env: set[str] | None) -> list[str]:
    """What the chart promises of every pod: non-root, read-only root, no capabilities, no
    service links (they would inject REVSYNC_*_SERVICE_* names), only settings revsync reads,
    credentials either all as files in REVSYNC_SECRETS_DIR or all as env."""
    problems = []
    spec = pod_spec(doc)
    volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
    if spec.get("enableServiceLinks") is not False:
        problems.append("enableServiceLinks is not false")
    if spec.get("securityContext", {}).get("runAsNonRoot") is not True:
        problems.append("pod securityContext.runAsNonRoot is not true")
    for container in spec.get("initContainers", []) + spec["containers"]:
        where = f"container {container['name']}"
        context = container.get("securityContext", {})
        if context.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: readOnlyRootFilesystem is not true")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if "ALL" not in context.get("capabilities", {}).get("drop", []):
            problems.append(f"{where}: capabilities do not drop ALL")
        if "resources" not in container:
            problems.append(f"{where}: no resources")
        if doc["kind"] == "Deployment":
            problems += [f"{where}: no {probe}" for probe in PROBES if probe not in container]
        names = [env["name"] for env in container.get("env", [])]
        if len(names) != len(set(names)):
            problems.append(f"{where}: an env name appears twice")
        problems += [
            f"{where}: {name} is no setting revsync reads"
            for name in names
            if not revsync_setting(name, known_env)
        ]
        problems += secrets_dir_problems(container, volumes, known_env)
    return problems


def secrets_dir_problems(
    container: dict[str, Any], volumes: dict[str, Any], known_env: set[str] | None
) -> list[str]:
    """REVSYNC_SECRETS_DIR names a mounted projection of Secrets whose files are named after
    settings revsync reads, and then no credential comes as env."""
    where = f"container {container['name']}"
    env = {variable["name"]: variable for variable in container.get("env", [])}
    if SECRETS_DIR not in env:
        return []
    problems = [
        f"{where}: {name} comes from a Secret as env beside {SECRETS_DIR}"
        for name, variable in env.items()
        if "secretKeyRef" in variable.get("valueFrom", {})
    ]
    directory = env[SECRETS_DIR].get("value")
    mount = next(
        (m for m in container.get("volumeMounts", []) if m["mountPath"] == directory), None
    )
    if mount is None:
        return [*problems, f"{where}: nothing is mounted at {SECRETS_DIR} {directory}"]
    sources = volumes.get(mount["name"], {}).get("projected", {}).get("sources", [])
    files = [item["path"] for source in sources for item in source["secret"].get("items", [])]
    if not files:
        problems.append(f"{where}: {SECRETS_DIR} {directory} holds no file of a Secret")
    problems += [
        f"{where}: {path} in {SECRETS_DIR} is no setting revsync reads"
        for path in files
        if not path.startswith("REVSYNC_") or not revsync_setting(path, known_env)
    ]
    return problems


def selects(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether ``policy`` applies to pods labelled ``labels`` (the chart selects by labels only)."""
    match: dict[str, str] = policy["spec"]["podSelector"].get("matchLabels", {})
    return all(labels.get(key) == value for key, value in match.items())


def network_problems(docs: list[dict[str, Any]]) -> list[str]:
    """Once the chart renders NetworkPolicies: one denying everything selects every pod, another
    selects each pod by its component and admits only what it names, and no rule opens every
    port."""
    policies = [doc for doc in docs if doc["kind"] == "NetworkPolicy"]
    if not policies:
        return []
    problems = []
    for policy in policies:
        name = f"NetworkPolicy/{policy['metadata']['name']}"
        spec = policy["spec"]
        if sorted(spec.get("policyTypes", [])) != ["Egress", "Ingress"]:
            problems.append(f"{name}: policyTypes are not Ingress and Egress")
        problems += [
            f"{name}: an {direction} rule opens every port"
            for direction in ("ingress", "egress")
            for rule in spec.get(direction, [])
            if not rule.get("ports")
        ]
    denials = [p for p in policies if not p["spec"].get("ingress") and not p["spec"].get("egress")]
    for doc in docs:
        if doc["kind"] not in POD_KINDS:
            continue
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        labels = pod_labels(doc)
        if not any(selects(policy, labels) for policy in denials):
            problems.append(f"{name}: no NetworkPolicy denies what the others do not admit")
        own = [
            policy
            for policy in policies
            if policy["spec"]["podSelector"].get("matchLabels", {}).get(COMPONENT)
            == labels.get(COMPONENT)
            and selects(policy, labels)
        ]
        if not own:
            problems.append(f"{name}: no NetworkPolicy of its own ({COMPONENT}) selects it")
    return problems


def container_ports(spec: dict[str, Any]) -> dict[str | int, int]:
    """A pod's container ports, by name and by number, to their numbers."""
    ports: dict[str | int, int] = {}
    for container in spec["containers"]:
        for port in container.get("ports", []):
            ports[port["containerPort"]] = port["containerPort"]
            if "name" in port:
                ports[port["name"]] = port["containerPort"]
    return ports


def service_problems(docs: list[dict[str, Any]]) -> list[str]:
    """Every Service selects a Deployment's pods, on a port they declare and, once the chart
    renders NetworkPolicies, one their own policy admits; every Ingress routes to a Service and
    port the chart renders, and its TLS names only hosts it routes."""
    problems = []
    deployments = [doc for doc in docs if doc["kind"] == "Deployment"]
    policies = [
        doc
        for doc in docs
        if doc["kind"] == "NetworkPolicy"
        and doc["spec"]["podSelector"].get("matchLabels", {}).get(COMPONENT)
    ]
    services = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "Service"}
    for service in services.values():
        name = f"Service/{service['metadata']['name']}"
        selector = service["spec"].get("selector", {})
        selected = [
            doc
            for doc in deployments
            if selector and all(pod_labels(doc).get(k) == v for k, v in selector.items())
        ]
        if not selected:
            problems.append(f"{name}: selects no Deployment's pods")
        for doc in selected:
            ports = container_ports(pod_spec(doc))
            labels = pod_labels(doc)
            admitted = {
                port.get("port")
                for policy in policies
                if selects(policy, labels)
                for rule in policy["spec"].get("ingress", [])
                for port in rule.get("ports", [])
            }
            for port in service["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                where = f"{name}: port {port.get('name', port['port'])}"
                if target not in ports:
                    problems.append(
                        f"{where}: Deployment/{doc['metadata']['name']} has no port {target}"
                    )
                elif policies and ports[target] not in admitted and target not in admitted:
                    problems.append(
                        f"{where}: no NetworkPolicy of Deployment/{doc['metadata']['name']}"
                        f" admits its port {ports[target]}"
                    )
    for ingress in (doc for doc in docs if doc["kind"] == "Ingress"):
        name = f"Ingress/{ingress['metadata']['name']}"
        hosts = {rule.get("host") for rule in ingress["spec"].get("rules", [])}
        backends = [
            path["backend"]["service"]
            for rule in ingress["spec"].get("rules", [])
            for path in rule.get("http", {}).get("paths", [])
            if "service" in path["backend"]
        ]
        if not backends:
            problems.append(f"{name}: routes to no Service")
        for backend in backends:
            routed = services.get(backend["name"])
            if routed is None:
                problems.append(f"{name}: routes to Service/{backend['name']}, not rendered")
                continue
            port = backend["port"].get("name", backend["port"].get("number"))
            if not any(port in (p.get("name"), p["port"]) for p in routed["spec"]["ports"]):
                problems.append(f"{name}: Service/{backend['name']} has no port {port}")
        problems += [
            f"{name}: TLS names {host}, which no rule routes"
            for tls in ingress["spec"].get("tls", [])
            for host in tls.get("hosts", [])
            if host not in hosts
        ]
    return problems


def principal_problems(docs: list[dict[str, Any]]) -> list[str]:
    """Least privilege: no two Deployments, nor a Deployment and the Job, read credentials from
    the same Secret or sign in to Kafka as the same user."""
    problems = []
    readers: dict[str, str] = {}
    users: dict[str, str] = {}
    for doc in docs:
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        spec = pod_spec(doc)
        for secret in sorted(credential_secrets(spec)):
            if readers.setdefault(secret, name) != name:
                problems.append(f"{name}: reads the Secret {secret}, as does {readers[secret]}")
        for user in sorted(
            {
                env["value"]
                for container in spec.get("initContainers", []) + spec["containers"]
                for env in container.get("env", [])
                if env["name"] == "REVSYNC_KAFKA_SASL_USERNAME"
            }
        ):
            if users.setdefault(user, name) != name:
                problems.append(f"{name}: signs in to Kafka as {user}, as does {users[user]}")
    return problems


def validate(
    path: Path, versions: list[str], known_env: set[str] | None
) -> tuple[int, int, list[str]]:
    """(documents checked against Kubernetes schemas, against CRD schemas, problems)."""
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    core = crd = 0
    problems = []
    configmaps = {
        doc["metadata"]["name"]: doc.get("data", {}) for doc in docs if doc["kind"] == "ConfigMap"
    }
    for doc in docs:
        name = f"{path.name}: {doc['kind']}/{doc['metadata']['name']}"
        crd_schema = CRD_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
        if crd_schema is not None:
            try:
                jsonschema.validate(doc, json.loads(crd_schema.read_text()))
            except jsonschema.ValidationError as error:
                problems.append(f"{name}: {error.json_path}: {error.message}")
            crd += 1
            continue
        for version in versions:
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as error:
                at = ".".join(str(part) for part in error.path)
                problems.append(f"{name} (Kubernetes {version}): {at}: {error.message}")
            except kv.SchemaNotFoundError as error:
                problems.append(f"{name}: {error.message}")
        core += 1
        if doc["kind"] in POD_KINDS:
            problems += [f"{name}: {problem}" for problem in policy_problems(doc, known_env)]
    problems += [f"{path.name}: {problem}" for problem in network_problems(docs)]
    problems += [f"{path.name}: {problem}" for problem in principal_problems(docs)]
    problems += [f"{path.name}: {problem}" for problem in service_problems(docs)]
    if known_env is not None:
        for configmap, data in configmaps.items():
            problems += [
                f"{path.name}: ConfigMap/{configmap}: {key} is no setting revsync reads"
                for key in data
                if not revsync_setting(key, known_env)
            ]
    return core, crd, problems


def check_dashboard(path: Path) -> list[str]:
    dashboard = json.loads(path.read_text())
    problems = []
    panels = [panel for panel in dashboard.get("panels", []) if panel.get("type") != "row"]
    if not panels:
        problems.append(f"{path.name}: no panels")
    for panel in panels:
        if not panel.get("targets") or not all(t.get("expr") for t in panel["targets"]):
            problems.append(f"{path.name}: panel {panel.get('title')!r} has no query")
    ids = [panel["id"] for panel in dashboard["panels"]]
    if len(ids) != len(set(ids)):
        problems.append(f"{path.name}: panel ids repeat")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kube-version", action="append", required=True)
    parser.add_argument("--known-env", type=Path, help="REVSYNC_* names revsync reads, one a line")
    parser.add_argument("--dashboard", type=Path, action="append", default=[])
    parser.add_argument("manifests", type=Path, nargs="+")
    args = parser.parse_args()
    known_env = set(args.known_env.read_text().split()) if args.known_env else None
    failed = False
    for path in args.manifests:
        core, crd, problems = validate(path, args.kube_version, known_env)
        for problem in problems:
            print(f"  FAIL {problem}")
        failed |= bool(problems)
        print(
            f"  {path.name}: {core} objects checked against Kubernetes "
            f"{', '.join(args.kube_version)} (strict), {crd} against the local CRD schemas"
            + ("" if known_env is None else ", REVSYNC_* names against revsync's settings")
            + (", with problems above" if problems else "")
        )
    for dashboard in args.dashboard:
        problems = check_dashboard(dashboard)
        for problem in problems:
            print(f"  FAIL {problem}")
        failed |= bool(problems)
        if not problems:
            print(f"  {dashboard.name}: valid JSON, every panel has a query")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
