"""The validation layer: parameters and JSON bodies checked, parsed once, validated, sanitized.

It runs after authentication and authorization, so an unauthenticated caller learns nothing
about the schema and the body of a refused caller is never parsed. A route's ``params`` (path,
query and header values) are checked against their schemas as a request hook; for each request
body::

    media type   415 unless application/json
    structure    depth, members, string and number sizes, duplicate keys (jsonguard) -> 400
    text         every string NFC-normalized; NUL and control characters refused -> 422
    schema       a pydantic model (strict) or the policy's JSON Schema -> 422, field errors
    extraneous   members the schema does not name -> 422 and ``malicious_extraneous``
    sanitizers   per field: HTML removed by nh3 with an explicit allowlist
    checks       the route's business rules, which raise ``ValidationFailed``

The app gets the result in ``RequestContext.json`` (and ``.model`` for a pydantic model), and
as the body it reads, re-encoded when sanitizing changed it. Every message is our own fixed
text per kind of error: never a parser's or a validator's message, never the client's input.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

import jsonschema_rs
import nh3
import orjson
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from apiforge.core.context import RequestContext
from apiforge.core.routing import RoutePlan
from apiforge.errors import ConfigurationError, FieldError, UnsupportedMediaType, ValidationFailed
from apiforge.jsonguard import JsonLimits, parse_json
from apiforge.policy.models import (
    BodySettings,
    FieldSanitizer,
    ParameterSettings,
    Policy,
    route_limits,
)

__all__ = ["BusinessCheck", "ValidationLayer", "sanitize_text"]

BusinessCheck = Callable[[Any, RequestContext], None]
"""``check(value, ctx)``: a business rule on the validated body; raises ``ValidationFailed``."""

# C0 and C1 controls, DEL and lone surrogates; tab, line feed and carriage return are text.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
# An unknown member's name is echoed only when it is a plain identifier; any other name is
# client text (markup, SQL, escapes) and is reported against the body ("") instead.
_SAFE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
_JSON_TYPE = re.compile(rb"application/(?:[\w.+-]+\+)?json\s*(?:;|\Z)", re.IGNORECASE)

_MAX_QUERY_FIELDS = 100
_REQUIRED = "This field is required."
_NOT_ALLOWED = "This field is not allowed."
_CONTROL_MESSAGE = "Must not contain control characters."
_TWICE = "A member is given twice."
_INVALID = "Invalid value."
_PYDANTIC_MESSAGES: dict[str, str] = {
    "missing": _REQUIRED,
    "extra_forbidden": _NOT_ALLOWED,
    "int_type": "Must be an integer.",
    "int_parsing": "Must be an integer.",
    "int_from_float": "Must be an integer.",
    "float_type": "Must be a number.",
    "float_parsing": "Must be a number.",
    "string_type": "Must be a string.",
    "bool_type": "Must be true or false.",
    "bool_parsing": "Must be true or false.",
    "dict_type": "Must be an object.",
    "model_type": "Must be an object.",
    "model_attributes_type": "Must be an object.",
    "list_type": "Must be an array.",
    "literal_error": "Must be one of the allowed values.",
    "enum": "Must be one of the allowed values.",
    "string_pattern_mismatch": "Does not have the required form.",
    "control_character": _CONTROL_MESSAGE,
}
# Bounds come from our schema, never from the input, so they are safe to show.
_PYDANTIC_BOUNDS: dict[str, tuple[str, str]] = {
    "greater_than_equal": ("ge", "Must be at least {}."),
    "greater_than": ("gt", "Must be greater than {}."),
    "less_than_equal": ("le", "Must be at most {}."),
    "less_than": ("lt", "Must be less than {}."),
    "string_too_long": ("max_length", "Must be at most {} characters."),
    "string_too_short": ("min_length", "Must be at least {} characters."),
    "too_long": ("max_length", "Must have at most {} items."),
    "too_short": ("min_length", "Must have at least {} items."),
}
_SCHEMA_MESSAGES: dict[str, str] = {
    "Type": "Has the wrong type.",
    "Enum": "Must be one of the allowed values.",
    "Constant": "Must be one of the allowed values.",
    "Pattern": "Does not have the required form.",
    "Format": "Does not have the required format.",
    "MultipleOf": "Is not an allowed multiple.",
    "UniqueItems": "Must not repeat items.",
}
_SCHEMA_BOUNDS: dict[str, str] = {
    "Minimum": "Must be at least {}.",
    "ExclusiveMinimum": "Must be greater than {}.",
    "Maximum": "Must be at most {}.",
    "ExclusiveMaximum": "Must be less than {}.",
    "MinLength": "Must be at least {} characters.",
    "MaxLength": "Must be at most {} characters.",
    "MinItems": "Must have at least {} items.",
    "MaxItems": "Must have at most {} items.",
    "MinProperties": "Must have at least {} members.",
    "MaxProperties": "Must have at most {} members.",
}


def sanitize_text(value: object, path: str = "") -> tuple[object, list[FieldError]]:
    """Every string in ``value`` NFC-normalized; control characters reported per field.

    Returns the normalized value and the field errors (empty when every string is clean).
    """
    errors: list[FieldError] = []

    def walk(item: object, where: str) -> object:
        if isinstance(item, str):
            if _CONTROL.search(item):
                errors.append(FieldError(where, _CONTROL_MESSAGE))
                return item
            return item if item.isascii() else unicodedata.normalize("NFC", item)
        if isinstance(item, dict):
            out: dict[str, object] = {}
            for key, member in item.items():
                name = key if key.isascii() else unicodedata.normalize("NFC", key)
                if _CONTROL.search(name):
                    errors.append(FieldError(where, _CONTROL_MESSAGE))
                    continue
                if name in out:
                    # Two spellings of one key (NFD and NFC): readers would disagree on which
                    # value it has, as with a plain duplicate key.
                    errors.append(FieldError(where, _TWICE))
                    continue
                out[name] = walk(member, f"{where}.{name}" if where else name)
            return out
        if isinstance(item, list):
            return [walk(member, f"{where}.{i}" if where else str(i))
                    for i, member in enumerate(item)]
        return item

    return walk(value, path), errors


class _BodyValidator:
    """The compiled body rules of one route; called with the whole body."""

    def __init__(
        self,
        settings: BodySettings,
        limits: JsonLimits,
        model: type[BaseModel] | None,
        check: BusinessCheck | None,
    ) -> None:
        self.limits = limits
        self.model = model
        self.check = check
        self.refuse_unknown = settings.unknown_fields == "refuse"
        self.schema: Any = None
        self.known: frozenset[str] | None = None
        if model is not None:
            names = set()
            for name, info in model.model_fields.items():
                names.add(name)
                if isinstance(info.alias, str):
                    names.add(info.alias)
            self.known = frozenset(names)
        elif settings.json_schema is not None:
            try:
                self.schema = jsonschema_rs.validator_for(settings.json_schema,
                                                          validate_formats=True)
            except (ValueError, jsonschema_rs.ValidationError) as exc:
                raise ConfigurationError(
                    f"body.json_schema is not a valid JSON Schema ({exc.__class__.__name__});"
                    " check it against draft 2020-12"
                ) from None
            properties = settings.json_schema.get("properties")
            if isinstance(properties, dict):
                self.known = frozenset(str(name) for name in properties)
        self.sanitizers: tuple[tuple[str, Callable[[str], str]], ...] = tuple(
            (name, _html_stripper(rule)) for name, rule in settings.sanitize.items()
            if rule.strip_html
        )

    def __call__(self, ctx: RequestContext, body: bytes) -> bytes | None:
        content_type = ctx.headers.get(b"content-type")
        if content_type is None or not _JSON_TYPE.match(content_type):
            raise UnsupportedMediaType(reason="not_json")
        parsed = parse_json(body, self.limits)
        value, errors = sanitize_text(parsed)
        if errors:
            raise ValidationFailed(errors, reason="unsafe_text")
        # Normalization changed the text: the app must read what was validated.
        changed = not body.isascii() and value != parsed
        if self.refuse_unknown and self.known is not None and isinstance(value, dict):
            unknown = [name for name in value if name not in self.known]
            if unknown:
                refusal = ValidationFailed(
                    [FieldError(name if _SAFE_NAME.match(name) else "", _NOT_ALLOWED)
                     for name in unknown],
                    reason="unknown_fields",
                )
                refusal.event = "malicious_extraneous"
                raise refusal
        if self.model is not None:
            if not isinstance(value, dict):
                raise ValidationFailed([FieldError("", "The body must be a JSON object.")])
            try:
                ctx.model = self.model.model_validate(value, strict=True)
            except ValidationError as exc:
                raise ValidationFailed([_pydantic_error(e) for e in exc.errors()],
                                       reason="schema") from None
        elif self.schema is not None:
            failures = [_schema_error(e) for e in self.schema.iter_errors(value)]
            if failures:
                raise ValidationFailed([f for group in failures for f in group], reason="schema")
        if self.sanitizers and isinstance(value, dict):
            for name, clean in self.sanitizers:
                text = value.get(name)
                if isinstance(text, str):
                    cleaned = clean(text)
                    if cleaned != text:
                        value[name] = cleaned
                        changed = True
        if self.check is not None:
            self.check(value, ctx)
        ctx.json = value
        return orjson.dumps(value) if changed else None


_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]{0,17})\Z")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]{0,17})(?:\.[0-9]{1,17})?(?:[eE][+-]?[0-9]{1,3})?\Z")
_ONCE = "Must appear only once."
# Texts a parameter found valid, kept per parameter: a client asks for the same ids again and
# again. Only valid, short texts enter, and the set is emptied when full, so it stays small.
_VALID_KEPT = 1024
_VALID_KEPT_LENGTH = 64


class _Parameter:
    """One parameter's compiled schema, and how its text becomes a JSON value."""

    def __init__(self, where: str, schema: dict[str, object]) -> None:
        schema = dict(schema)
        self.where = where
        self.required = schema.pop("required", False) is True
        kind = schema.get("type")
        self.kind = kind if kind in ("integer", "number", "boolean") else "string"
        try:
            self.validator: Any = jsonschema_rs.validator_for(schema, validate_formats=True)
        except (ValueError, jsonschema_rs.ValidationError) as exc:
            raise ConfigurationError(
                f"params: the schema of {where} is not a valid JSON Schema"
                f" ({exc.__class__.__name__})"
            ) from None
        self.valid: set[str] = set()

    def problem(self, text: str | None) -> FieldError | None:
        """What is wrong with this parameter's text (``None``: absent), or None if nothing."""
        if text is None:
            return FieldError(self.where, _REQUIRED) if self.required else None
        if text in self.valid:
            return None
        problem = self.check(text)
        if problem is None and len(text) <= _VALID_KEPT_LENGTH:
            if len(self.valid) >= _VALID_KEPT:
                self.valid.clear()
            self.valid.add(text)
        return problem

    def check(self, text: str) -> FieldError | None:
        value: object = text
        if self.kind == "integer":
            if not _INTEGER.match(text):
                return FieldError(self.where, "Must be an integer.")
            value = int(text)
        elif self.kind == "number":
            if not _NUMBER.match(text):
                return FieldError(self.where, "Must be a number.")
            value = float(text)
        elif self.kind == "boolean":
            if text not in ("true", "false"):
                return FieldError(self.where, "Must be true or false.")
            value = text == "true"
        elif _CONTROL.search(text):  # the patterns above admit no control character
            return FieldError(self.where, _CONTROL_MESSAGE)
        if self.validator.is_valid(value):  # no error objects on the common path
            return None
        for error in self.validator.iter_errors(value):
            return FieldError(self.where, _schema_error(error)[0].message)
        return None


class _ParameterValidator:
    """A route's path, query and header parameters, checked as a request hook."""

    def __init__(self, settings: ParameterSettings) -> None:
        self.path = {n: _Parameter(f"path.{n}", s) for n, s in settings.path.items()}
        self.query = {n: _Parameter(f"query.{n}", s) for n, s in settings.query.items()}
        self.headers = {n.lower().encode("latin-1"): _Parameter(f"headers.{n.lower()}", s)
                        for n, s in settings.headers.items()}
        self.refuse_unknown = settings.unknown_query == "refuse"

    def __call__(self, ctx: RequestContext, scope: Any) -> None:
        errors: list[FieldError] = []
        params = ctx.path_params
        for name, parameter in self.path.items():
            problem = parameter.problem(params.get(name))
            if problem is not None:
                errors.append(problem)
        query = scope.get("query_string")
        if query or self.query:
            self._check_query(query or b"", errors)
        for raw_name, parameter in self.headers.items():
            raw = ctx.headers.get(raw_name)
            problem = parameter.problem(raw.decode("latin-1") if raw is not None else None)
            if problem is not None:
                errors.append(problem)
        if errors:
            raise ValidationFailed(errors, reason="parameters")

    def _check_query(self, query: bytes, errors: list[FieldError]) -> None:
        seen: dict[str, str] = {}
        if query:
            try:
                pairs = parse_qsl(query.decode("utf-8"), keep_blank_values=True,
                                  max_num_fields=_MAX_QUERY_FIELDS)
            except (UnicodeDecodeError, ValueError):
                raise ValidationFailed([FieldError("query", _INVALID)],
                                       reason="query_unparseable") from None
            for name, value in pairs:
                shown = name if _SAFE_NAME.match(name) else ""
                if name in seen:
                    errors.append(FieldError(f"query.{shown}" if shown else "query", _ONCE))
                elif name not in self.query and self.refuse_unknown:
                    errors.append(FieldError(f"query.{shown}" if shown else "query",
                                             _NOT_ALLOWED))
                seen[name] = value
        for name, parameter in self.query.items():
            problem = parameter.problem(seen.get(name))
            if problem is not None:
                errors.append(problem)


class ValidationLayer:
    """Validates the bodies of the routes that declare one (``body:`` in the route settings).

    Args:
        policy: the policy; routes with ``body`` settings get a validator.
        models: pydantic models by route key (``"PUT /v1/users/me"``), validated in strict mode
            (library mode); they take the place of a route's ``json_schema``.
        checks: business rules by route key, run on the validated body.
    """

    name = "validation"

    def __init__(
        self,
        policy: Policy,
        models: Mapping[str, type[BaseModel]] | None = None,
        checks: Mapping[str, BusinessCheck] | None = None,
    ) -> None:
        self.policy = policy
        self.models = dict(models or {})
        self.checks = dict(checks or {})
        for key in (*self.models, *self.checks):
            if key not in policy.routes:
                raise ConfigurationError(
                    f"a body model or check is given for {key!r}, which the policy does not"
                    " declare; add it under routes: or fix the key"
                )

    def early_hook(self) -> None:
        return None

    def response_hook(self) -> None:
        return None

    def attach(self, plan: RoutePlan) -> None:
        if plan.settings.params is not None:
            plan.request_hooks = (*plan.request_hooks,
                                  _ParameterValidator(plan.settings.params))
        settings = plan.settings.body
        model = self.models.get(plan.key)
        if settings is None:
            if model is None:
                return
            settings = BodySettings()
        json_limits = route_limits(self.policy, plan.settings).json_body
        limits = JsonLimits(
            max_depth=json_limits.max_depth,
            max_members=json_limits.max_members,
            max_string=json_limits.max_string,
            max_number_digits=json_limits.max_number_digits,
        )
        plan.read_body = True
        plan.body_hooks = (*plan.body_hooks,
                           _BodyValidator(settings, limits, model, self.checks.get(plan.key)))


def _html_stripper(rule: FieldSanitizer) -> Callable[[str], str]:
    tags = set(rule.allowed_tags)

    def strip(text: str) -> str:
        return nh3.clean(text, tags=tags, attributes={}, clean_content_tags={"script", "style"},
                         strip_comments=True)

    return strip


def _pydantic_error(error: ErrorDetails) -> FieldError:
    loc = error["loc"]
    kind = error["type"]
    if kind == "extra_forbidden" and not all(
        isinstance(part, str) and _SAFE_NAME.match(part) for part in loc
    ):
        return FieldError("", _NOT_ALLOWED)
    field = ".".join(str(part) for part in loc)
    bound = _PYDANTIC_BOUNDS.get(kind)
    context = error.get("ctx") or {}
    if bound is not None and bound[0] in context:
        return FieldError(field, bound[1].format(context[bound[0]]))
    if kind == "value_error" and str(error.get("msg", "")).startswith(
        "value is not a valid email address"
    ):
        return FieldError(field, "Must be a valid email address.")
    return FieldError(field, _PYDANTIC_MESSAGES.get(kind, _INVALID))


def _schema_error(error: Any) -> list[FieldError]:
    kind = error.kind
    kind_name = type(kind).__name__
    field = ".".join(str(part) for part in error.instance_path)
    if kind_name == "Required":
        name = str(kind.property)
        member = name if _SAFE_NAME.match(name) else ""
        return [FieldError(f"{field}.{member}" if field and member else member or field,
                           _REQUIRED)]
    if kind_name in ("AdditionalProperties", "UnevaluatedProperties"):
        names = [str(n) for n in getattr(kind, "unexpected", ())] or [""]
        return [FieldError(
            (f"{field}.{n}" if field else n) if _SAFE_NAME.match(n) else field, _NOT_ALLOWED)
            for n in names]
    if kind_name in _SCHEMA_BOUNDS:
        return [FieldError(field, _SCHEMA_BOUNDS[kind_name].format(kind.limit))]
    return [FieldError(field, _SCHEMA_MESSAGES.get(kind_name, _INVALID))]
