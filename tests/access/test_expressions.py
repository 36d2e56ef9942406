"""The CEL compiler: known-answer vectors (vectors/cel.json), precedence, errors and bounds."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from apiforge.access.expressions import (
    MAX_DEPTH,
    MAX_LENGTH,
    RuleError,
    RuleSyntaxError,
    compile_expression,
)
from apiforge.errors import ApiForgeError, ConfigurationError

VECTORS = json.loads((Path(__file__).parent / "vectors" / "cel.json").read_text("utf-8"))
ACTIVATION: dict[str, Any] = VECTORS["activation"]


def evaluate(source: str, activation: dict[str, Any] | None = None) -> Any:
    return compile_expression(source).evaluate(activation or ACTIVATION)


@pytest.mark.parametrize(("source", "expected"), VECTORS["values"])
def test_values(source: str, expected: Any) -> None:
    value = evaluate(source)
    if isinstance(expected, list):  # a CEL list may be a Python list or tuple
        assert isinstance(value, list | tuple) and list(value) == expected
    else:
        assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("source", VECTORS["errors"])
def test_evaluation_errors(source: str) -> None:
    with pytest.raises(RuleError):
        evaluate(source)


@pytest.mark.parametrize(("source", "position", "fragment"), VECTORS["syntax"])
def test_syntax_errors_name_the_position_and_the_problem(
        source: str, position: int, fragment: str) -> None:
    with pytest.raises(RuleSyntaxError) as info:
        compile_expression(source)
    assert info.value.position == position, str(info.value)
    assert fragment in str(info.value)
    assert str(info.value).startswith(f"column {position + 1}: ")


def test_exception_tree() -> None:
    assert issubclass(RuleSyntaxError, ConfigurationError)
    assert issubclass(RuleSyntaxError, ValueError)  # pydantic validators report it
    assert issubclass(RuleError, ApiForgeError)
    assert not issubclass(RuleError, ConfigurationError)


def test_precedence_matches_cel() -> None:
    # && binds tighter than ||, relations tighter than &&, ?: loosest and right-associative.
    assert evaluate("false && false || true") is True
    assert evaluate("true || true && false") is True
    assert evaluate("1 + 2 == 3 ? 10 : 20") == 10
    assert evaluate("true ? false ? 1 : 2 : 3") == 2
    assert evaluate("!false && false") is False
    assert evaluate("-resource.id + 1") == -6
    assert evaluate("2 * 3 % 4") == 2  # left to right at the same level
    assert evaluate("1 in [1] == true") is True  # `in` is a relation, left-associative


@pytest.mark.parametrize(("op", "ok"), [("&&", False), ("||", True)])
def test_logical_operators_absorb_errors_from_either_side(op: str, ok: bool) -> None:
    absorbing = "true" if ok else "false"
    other = "false" if ok else "true"
    assert evaluate(f"resource.missing {op} {absorbing}") is ok
    assert evaluate(f"{absorbing} {op} resource.missing") is ok
    with pytest.raises(RuleError):
        evaluate(f"resource.missing {op} {other}")
    with pytest.raises(RuleError):
        evaluate(f"{other} {op} resource.missing")
    with pytest.raises(RuleError):
        evaluate(f"resource.missing {op} resource.other")


def test_logical_operators_short_circuit() -> None:
    calls: list[str] = []

    class Spy(dict[str, Any]):
        def __getitem__(self, key: str) -> Any:
            calls.append(key)
            return super().__getitem__(key)

    activation = {**ACTIVATION, "env": Spy(x=True)}
    assert evaluate("false && env.x", activation) is False
    assert evaluate("true || env.x", activation) is True
    assert calls == []


def test_no_implicit_conversion() -> None:
    assert evaluate("principal.user_id == \"7\"") is False
    for source in ('"7" + 1', '1 < "2"', '"1" >= 0', "true + 1", "[1] + 1", "null + null"):
        with pytest.raises(RuleError):
            evaluate(source)


def test_python_values_map_to_cel_types() -> None:
    activation: dict[str, Any] = {"principal": {"roles": frozenset({"a"}), "ids": (1, 2)},
                  "resource": {}, "request": {}, "env": {}}
    assert evaluate('"a" in principal.roles', activation) is True
    assert evaluate("principal.ids == [1, 2]", activation) is True
    assert evaluate("size(principal.roles)", activation) == 1
    activation["resource"] = {"when": object()}
    with pytest.raises(RuleError):
        evaluate("resource.when == 1", activation)


def test_double_division_follows_ieee() -> None:
    assert evaluate("1.0 / 0.0") == math.inf
    assert evaluate("-1.0 / 0.0") == -math.inf
    assert math.isnan(evaluate("0.0 / 0.0"))


def test_missing_variable_in_activation_is_a_rule_error() -> None:
    with pytest.raises(RuleError, match="no value for 'env'"):
        compile_expression("env.x").evaluate({"principal": {}})


def test_errors_never_show_values() -> None:
    activation = {**ACTIVATION, "resource": {"secret": "hunter2", "keys": {"hunter2": 1}}}
    for source in ("resource.secret + 1", "resource.keys[resource.secret + \"x\"]",
                   "resource.secret.nope", "int(resource.secret)"):
        with pytest.raises(RuleError) as info:
            evaluate(source, activation)
        assert "hunter2" not in str(info.value)


def test_length_is_bounded() -> None:
    compile_expression("1 == " + " " * (MAX_LENGTH - 6) + "1")
    with pytest.raises(RuleSyntaxError, match="longer than 4096"):
        compile_expression("1 == 1" + " " * MAX_LENGTH)


@pytest.mark.parametrize("build", [
    lambda n: "(" * n + "1" + ")" * n,
    lambda n: "!" * n + "true",
    lambda n: "[" * n + "]" * n,
    lambda n: " + ".join(["1"] * n),
    lambda n: "resource" + ".a" * n,
    lambda n: "resource" + "[0]" * n,
])
def test_depth_is_bounded(build: Any) -> None:
    compile_expression(build(MAX_DEPTH // 2))
    with pytest.raises(RuleSyntaxError, match=f"deeper than {MAX_DEPTH}"):
        compile_expression(build(MAX_DEPTH * 2))
    with pytest.raises(RuleSyntaxError):  # never a RecursionError, however deep
        compile_expression(build(MAX_LENGTH // 4))


def test_compiled_rules_are_shared_and_constant_lists_are_immutable() -> None:
    assert compile_expression("1 == 1") is compile_expression("1 == 1")
    first = evaluate('["a", "b"]')
    assert first == ("a", "b") or first == ["a", "b"]
    with pytest.raises((TypeError, AttributeError)):
        first.append("c")
