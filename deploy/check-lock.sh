#!/usr/bin/env bash
# Fails when requirements.lock (make lock) no longer fits pyproject.toml, by doing what the
# Dockerfile does, without Docker: into a fresh venv, the lock's pins alone (--require-hashes
# --no-deps, wheels only), then revsync from a copy of what the image copies (--no-deps, no
# build isolation: setuptools and wheel come from the lock). Then every requirement of
# pyproject, followed through each distribution's own (extras included), must be pinned at a
# version it accepts, every pin must be needed by one, and `revsync --help` must run.
# The pins are downloaded into .tools/wheelhouse (gitignored) once; after that it runs offline.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
wheelhouse=.tools/wheelhouse
"$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || { echo "deploy/check-lock.sh: the lock is for CPython 3.11; $python is not"; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$python" -m venv "$out/venv"
pip=("$out/venv/bin/pip" --disable-pip-version-check --quiet)

install_locked() {
    "${pip[@]}" install --no-index --find-links "$wheelhouse" --require-hashes --no-deps \
        --only-binary :all: -r requirements.lock
}
if ! install_locked 2>/dev/null; then
    echo "downloading the lock's pins into $wheelhouse"
    "${pip[@]}" download --require-hashes --no-deps --only-binary :all: -r requirements.lock \
        -d "$wheelhouse"
    install_locked
fi
mkdir "$out/src"
cp -r pyproject.toml README.md services "$out/src/"
"${pip[@]}" install --no-index --no-deps --no-build-isolation "$out/src"

site=$("$out/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
"$python" - "$site" <<'PY'
import re
import sys
import tomllib
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

installed = {
    canonicalize_name(dist.metadata["Name"]): dist
    for dist in metadata.distributions(path=[sys.argv[1]])
}
with open("requirements.lock") as lock_file:
    pins = {
        canonicalize_name(name): version
        for name, version in re.findall(r"^([A-Za-z0-9][\w.-]*)==(\S+)", lock_file.read(), re.M)
    }
with open("pyproject.toml", "rb") as pyproject_file:
    pyproject = tomllib.load(pyproject_file)

problems: list[str] = []
needed: set[str] = set()
seen: set[tuple[str, frozenset[str]]] = set()
# (requirement, who asks for it, the extras it was asked with)
queue = [
    (Requirement(text), "pyproject.toml", frozenset[str]())
    for text in pyproject["project"]["dependencies"]
]
queue += [
    (Requirement(text), "pyproject.toml build-system", frozenset[str]())
    for text in pyproject["build-system"]["requires"]
]
while queue:
    requirement, asker, asker_extras = queue.pop()
    if requirement.marker is not None and not any(
        requirement.marker.evaluate({"extra": extra}) for extra in {"", *asker_extras}
    ):
        continue
    name = canonicalize_name(requirement.name)
    if name not in pins:
        problems.append(f"{asker} needs {requirement}, which requirements.lock does not pin")
        continue
    if not requirement.specifier.contains(pins[name], prereleases=True):
        problems.append(f"{asker} needs {requirement}; requirements.lock pins {name}=={pins[name]}")
    needed.add(name)
    extras = frozenset(requirement.extras)
    if (name, extras) in seen:
        continue
    seen.add((name, extras))
    for text in installed[name].requires or []:
        queue.append((Requirement(text), f"{name} {pins[name]}", extras))
problems += [
    f"requirements.lock pins {name}=={pins[name]}, which nothing in pyproject.toml needs"
    for name in sorted(set(pins) - needed)
]
if problems:
    sys.exit("requirements.lock is out of date (make lock):\n  " + "\n  ".join(problems))
print(f"requirements.lock: {len(pins)} pins, each needed, installed with --require-hashes")
PY
"$out/venv/bin/revsync" --help >/dev/null
echo "requirements.lock: revsync installs and runs on the lock's pins alone"
