"""Loading ``apiforge.yaml`` into a :class:`Policy`, with errors that name the key and the fix."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from apiforge.errors import ConfigurationError
from apiforge.policy.models import Policy

__all__ = ["DEFAULT_POLICY_PATH", "load_policy", "policy_errors"]

DEFAULT_POLICY_PATH = Path("apiforge.yaml")


def policy_errors(data: Mapping[str, Any]) -> list[str]:
    """Every problem with ``data`` as a policy, one line each; empty when it is valid."""
    try:
        Policy.model_validate(data)
    except ValidationError as exc:
        return [_describe(error) for error in exc.errors()]
    return []


def load_policy(source: Policy | Mapping[str, Any] | str | Path | None = None) -> Policy:
    """Load a policy from a file path, a mapping, or return a :class:`Policy` as it is.

    ``None`` reads ``./apiforge.yaml``.

    Raises:
        ConfigurationError: naming each bad key path, its value and the fix.
    """
    if isinstance(source, Policy):
        return source
    if source is None or isinstance(source, str | Path):
        data = _read_yaml(Path(source) if source is not None else DEFAULT_POLICY_PATH)
        origin = str(source or DEFAULT_POLICY_PATH)
    else:
        data, origin = source, "policy"
    errors = policy_errors(data)
    if errors:
        lines = "\n".join(f"  - {line}" for line in errors)
        raise ConfigurationError(f"{origin}: {len(errors)} problem(s):\n{lines}")
    return Policy.model_validate(data)


def _read_yaml(path: Path) -> Mapping[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigurationError(
            f"{path}: no such policy file; pass --policy FILE or create {path}"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"{path}: cannot be read ({exc.__class__.__name__})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigurationError(f"{path}: not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigurationError(f"{path}: the policy must be a mapping of keys to values")
    return data


def _describe(error: Mapping[str, Any]) -> str:
    path = ".".join(str(part) for part in error["loc"]) or "(top level)"
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        return f"{path}: unknown key; remove it or check its spelling against docs/policy.md"
    if kind == "missing":
        return f"{path}: required key is missing"
    message = str(error["msg"]).removeprefix("Value error, ")
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return f"{path} = {shown}: {message}"
