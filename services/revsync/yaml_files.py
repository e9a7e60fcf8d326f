"""Reading a YAML file into a pydantic model, every failure as one typed error that names
the file and, for invalid content, each offending entry."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from revsync.errors import RevsyncError

M = TypeVar("M", bound=BaseModel)


def load_model(path: Path, model: type[M], error: type[RevsyncError], what: str) -> M:
    """``path`` as a ``model``; ``what`` names the file's role in the missing-file message."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise error(f"no {what} at {path}") from None
    except yaml.YAMLError as problem:
        raise error(f"{path}: not valid YAML: {problem}") from None
    try:
        return model.model_validate(raw)
    except ValidationError as invalid:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in issue['loc']) or what}: "
            f"{issue['msg'].removeprefix('Value error, ')}"
            for issue in invalid.errors()
        )
        raise error(f"{path}: {problems}") from None
