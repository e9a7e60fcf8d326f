"""Validates rendered chart manifests offline: Kubernetes kinds against the schemas that
kubernetes-validate ships (strict: unknown fields fail), the chart's two CRDs against the local
schemas in ``schemas/``, and the rules the chart promises of every revsync pod.

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


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]
    return spec if doc["kind"] == "Pod" else spec["template"]["spec"]


def policy_problems(doc: dict[str, Any], known_env: set[str] | None) -> list[str]:
    """What the chart promises of every pod: non-root, read-only root, no capabilities, no
    service links (they would inject REVSYNC_*_SERVICE_* names), only settings revsync reads."""
    problems = []
    spec = pod_spec(doc)
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
        if known_env is not None:
            problems += [
                f"{where}: {name} is no setting revsync reads"
                for name in names
                if name.startswith("REVSYNC_")
                and not name.startswith("REVSYNC_KAFKA_")
                and name not in known_env
            ]
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
    if known_env is not None:
        for configmap, data in configmaps.items():
            problems += [
                f"{path.name}: ConfigMap/{configmap}: {key} is no setting revsync reads"
                for key in data
                if key.startswith("REVSYNC_")
                and not key.startswith("REVSYNC_KAFKA_")
                and key not in known_env
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
