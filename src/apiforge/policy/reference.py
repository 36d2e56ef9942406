"""``docs/policy.md``, generated from the policy models so the two never drift apart.

Run ``apiforge policy-docs > docs/policy.md`` after changing a model; a test fails while the
committed file differs from what this module renders.
"""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from apiforge.policy.models import Policy, RouteSettings

__all__ = ["render_reference"]

_INTRO = """\
# Policy reference

The policy file (`apiforge.yaml` by default; every command takes `--policy FILE`) declares
everything APIForge does. Unknown keys are refused, and unsafe values are refused at load time
with a message that names the key, the value and the fix: `apiforge check-config FILE` prints
them all. Every key has a safe default, shown below.

This page is generated from the policy models (`apiforge policy-docs`).
"""


def render_reference() -> str:
    """The whole reference page as Markdown."""
    sections: list[str] = [_INTRO]
    seen: set[type[BaseModel]] = set()
    queue: list[tuple[str, type[BaseModel]]] = [("(top level)", Policy),
                                                ("routes.\"METHOD /path\"", RouteSettings)]
    while queue:
        where, model = queue.pop(0)
        if model in seen:
            continue
        seen.add(model)
        sections.append(_render_model(where, model, queue))
    return "\n".join(sections).rstrip() + "\n"


def _render_model(
    where: str, model: type[BaseModel], queue: list[tuple[str, type[BaseModel]]]
) -> str:
    doc = inspect.cleandoc(model.__doc__ or "")
    lines = [f"## `{model.__name__}` — {where}", "", doc, ""]
    for name, info in model.model_fields.items():
        key = info.alias or name
        lines.append(f"### `{key}`")
        lines.append("")
        lines.append(f"Type: `{_type_name(info.annotation)}`. Default: {_default(info)}.")
        lines.append("")
        description = (info.description or "").strip()
        if description:
            lines.append(description)
            lines.append("")
        for nested in _models_in(info.annotation):
            label = f"{where}.{key}" if where != "(top level)" else key
            queue.append((label, nested))
    return "\n".join(lines)


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        value: Any = info.default_factory()  # type: ignore[call-arg]
    elif info.default is PydanticUndefined:
        return "required"
    else:
        value = info.default
    if isinstance(value, BaseModel):
        return "see below"
    return f"`{value!r}`" if not isinstance(value, str) else f'`"{value}"`'


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _type_name(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in typing.get_args(annotation))
    if origin is typing.Literal:
        return " | ".join(repr(arg) for arg in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(_type_name(arg) for arg in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found.extend(_models_in(arg))
    return found
