"""Rules in CEL (Common Expression Language), compiled to Python closures at load time.

A rule such as ``resource.owner == principal.user_id`` is tokenized, parsed (a Pratt parser)
and turned into a tree of closures once, when the policy loads; a request only calls the
closure (about a microsecond), never the parser. The subset of CEL is listed in
``docs/authorization.md``. Its semantics follow the CEL specification where they matter for
security:

* no implicit conversion: ``1 == "1"`` is false, ``"a" + 1`` and ``1 < "2"`` are errors
  (``int`` and ``double`` do compare with each other, as in CEL);
* a missing map key or field is an error, never null: test for it with ``has()``;
* ``&&`` and ``||`` absorb errors as CEL does, on either side: ``false && error`` is false and
  ``true || error`` is true; otherwise the error stands;
* integers are 64-bit: an overflow is an error, not a silently larger number.

Values are plain Python data: ``dict`` (map), ``list``/``tuple``/``set``/``frozenset`` (list),
``str``, ``int``, ``float``, ``bool`` and ``None``. Anything else is an error where it is used.

Errors::

    ApiForgeError
    ├── ConfigurationError
    │   └── RuleSyntaxError   the rule does not compile; carries the position (a ValueError too)
    └── RuleError             the rule cannot be evaluated on this input
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

from apiforge.errors import ApiForgeError, ConfigurationError

__all__ = [
    "MAX_DEPTH",
    "MAX_LENGTH",
    "VARIABLES",
    "Expression",
    "RuleError",
    "RuleSyntaxError",
    "compile_expression",
]

VARIABLES = frozenset({"principal", "resource", "request", "env"})
"""The top-level names a rule may use."""

MAX_LENGTH = 4096
"""Longest rule, in characters."""

MAX_DEPTH = 64
"""Deepest nesting of a rule's syntax tree: bounds the parser's and the closures' recursion."""

Activation = Mapping[str, Any]
Evaluator = Callable[[Activation], Any]


class RuleSyntaxError(ConfigurationError, ValueError):
    """A rule does not compile. ``position`` is the 0-based offset of the problem in the rule.

    It is a ``ValueError`` too, so a pydantic validator turns it into a policy error.
    """

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"column {position + 1}: {message}")
        self.message = message
        self.position = position


class RuleError(ApiForgeError):
    """A rule could not be evaluated on this input (a missing key, a type mismatch, ...).

    The message names the operation and the types involved, never the values, which may be
    personal data.
    """


@dataclass(frozen=True, slots=True)
class Expression:
    """A compiled rule.

    Attributes:
        source: the rule as written.
        evaluate: ``evaluate(activation)`` → the value; ``activation`` maps ``principal``,
            ``resource``, ``request`` and ``env`` to plain data. Raises :class:`RuleError`.
    """

    source: str
    evaluate: Evaluator


@functools.lru_cache(maxsize=1024)
def compile_expression(source: str) -> Expression:
    """Compile a CEL rule once; the result is immutable and may be shared.

    Raises:
        RuleSyntaxError: the rule is too long, too deep, malformed, or names an unknown
            variable or function.
    """
    if len(source) > MAX_LENGTH:
        raise RuleSyntaxError(f"the rule is longer than {MAX_LENGTH} characters", MAX_LENGTH)
    tree = _Parser(source).parse()
    return Expression(source, _compile(tree, VARIABLES, 1))


# --- Tokens ----------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r\n]+)
  | (?P<double>[0-9]+\.[0-9]+(?:[eE][+-]?[0-9]+)?|[0-9]+[eE][+-]?[0-9]+)
  | (?P<int>0[xX][0-9a-fA-F]+|[0-9]+)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>&&|\|\||==|!=|<=|>=|[-+*/%!<>?:.,()\[\]])
    """,
    re.VERBOSE,
)
_KEYWORDS = {"true": True, "false": False, "null": None}
# Reserved by the CEL specification: refused so a rule never means something else later.
_RESERVED = frozenset({
    "as", "break", "const", "continue", "else", "for", "function", "if", "import", "let",
    "loop", "package", "namespace", "return", "var", "void", "while",
})
_ESCAPE = re.compile(r"\\(?:u([0-9a-fA-F]{4})|x([0-9a-fA-F]{2})|(.))", re.DOTALL)
_SIMPLE_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "`": "`", "?": "?", "n": "\n", "r": "\r",
                   "t": "\t", "a": "\a", "b": "\b", "f": "\f", "v": "\v"}
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


class _Token(NamedTuple):
    kind: str  # "int", "double", "string", "literal", "ident", "in", "eof", or the operator
    value: Any
    position: int


def _tokenize(source: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while position < len(source):
        m = _TOKEN.match(source, position)
        if m is None:
            raise RuleSyntaxError(f"unexpected character {source[position]!r}", position)
        kind = m.lastgroup
        text = m.group()
        if kind == "int":
            tokens.append(_Token("int", int(text, 0), position))
        elif kind == "double":
            tokens.append(_Token("double", float(text), position))
        elif kind == "string":
            tokens.append(_Token("string", _unescape(text[1:-1], position + 1), position))
        elif kind == "ident":
            if text in _KEYWORDS:
                tokens.append(_Token("literal", _KEYWORDS[text], position))
            elif text == "in":
                tokens.append(_Token("in", text, position))
            elif text in _RESERVED:
                raise RuleSyntaxError(f"{text!r} is a reserved word", position)
            else:
                tokens.append(_Token("ident", text, position))
        elif kind == "op":
            tokens.append(_Token(text, text, position))
        position = m.end()
    tokens.append(_Token("eof", None, len(source)))
    return tokens


def _unescape(text: str, offset: int) -> str:
    def replace(m: re.Match[str]) -> str:
        if m.group(1) or m.group(2):
            code = int(m.group(1) or m.group(2), 16)
            if 0xD800 <= code <= 0xDFFF:
                raise RuleSyntaxError("a surrogate is not a character", offset + m.start())
            return chr(code)
        simple = _SIMPLE_ESCAPES.get(m.group(3))
        if simple is None:
            raise RuleSyntaxError(f"unknown escape \\{m.group(3)}", offset + m.start())
        return simple

    return _ESCAPE.sub(replace, text) if "\\" in text else text


# --- Syntax tree -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Literal:
    value: Any
    position: int


@dataclass(frozen=True, slots=True)
class _List:
    items: tuple[_Node, ...]
    position: int


@dataclass(frozen=True, slots=True)
class _Ident:
    name: str
    position: int


@dataclass(frozen=True, slots=True)
class _Select:
    operand: _Node
    field: str
    position: int


@dataclass(frozen=True, slots=True)
class _Index:
    operand: _Node
    index: _Node
    position: int


@dataclass(frozen=True, slots=True)
class _Call:
    function: str
    target: _Node | None  # ``x.f(...)``: x; ``f(...)``: None
    args: tuple[_Node, ...]
    position: int


@dataclass(frozen=True, slots=True)
class _Unary:
    op: str
    operand: _Node
    position: int


@dataclass(frozen=True, slots=True)
class _Binary:
    op: str
    left: _Node
    right: _Node
    position: int


@dataclass(frozen=True, slots=True)
class _Conditional:
    condition: _Node
    then: _Node
    otherwise: _Node
    position: int


_Node = _Literal | _List | _Ident | _Select | _Index | _Call | _Unary | _Binary | _Conditional

# Binding powers, lowest first, as in the CEL grammar: ?: || && relations +- */%, then the
# unary operators and member access.
_INFIX = {"?": 1, "||": 2, "&&": 3, "<": 4, "<=": 4, ">": 4, ">=": 4, "==": 4, "!=": 4,
          "in": 4, "+": 5, "-": 5, "*": 6, "/": 6, "%": 6}
_UNARY_POWER = 6


class _Parser:
    def __init__(self, source: str) -> None:
        self.tokens = _tokenize(source)
        self.index = 0
        self.depth = 0

    def parse(self) -> _Node:
        node = self.expression(0)
        token = self.peek()
        if token.kind != "eof":
            raise RuleSyntaxError(f"unexpected {_describe(token)}", token.position)
        return node

    def peek(self) -> _Token:
        return self.tokens[self.index]

    def advance(self) -> _Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def expect(self, kind: str) -> _Token:
        token = self.advance()
        if token.kind != kind:
            raise RuleSyntaxError(f"expected {kind!r}, found {_describe(token)}", token.position)
        return token

    def expression(self, min_power: int) -> _Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise RuleSyntaxError(f"the rule nests deeper than {MAX_DEPTH} levels",
                                  self.peek().position)
        left = self.unary()
        while True:
            token = self.peek()
            power = _INFIX.get(token.kind)
            if power is None or power <= min_power:
                break
            self.advance()
            if token.kind == "?":
                then = self.expression(0)
                self.expect(":")
                otherwise = self.expression(power - 1)  # right-associative
                left = _Conditional(left, then, otherwise, token.position)
            else:
                left = _Binary(token.kind, left, self.expression(power), token.position)
        self.depth -= 1
        return left

    def unary(self) -> _Node:
        token = self.peek()
        if token.kind in ("!", "-"):
            self.advance()
            return _Unary(token.kind, self.expression(_UNARY_POWER), token.position)
        return self.member(self.primary())

    def primary(self) -> _Node:
        token = self.advance()
        if token.kind in ("int", "double", "string", "literal"):
            return _Literal(token.value, token.position)
        if token.kind == "ident":
            if self.peek().kind == "(":
                self.advance()
                return _Call(token.value, None, self.arguments(), token.position)
            return _Ident(token.value, token.position)
        if token.kind == "(":
            node = self.expression(0)
            self.expect(")")
            return node
        if token.kind == "[":
            return _List(self.sequence("]"), token.position)
        raise RuleSyntaxError(f"expected a value, found {_describe(token)}", token.position)

    def member(self, node: _Node) -> _Node:
        while True:
            token = self.peek()
            if token.kind == ".":
                self.advance()
                name = self.expect("ident")
                if self.peek().kind == "(":
                    self.advance()
                    node = _Call(name.value, node, self.arguments(), name.position)
                else:
                    node = _Select(node, name.value, name.position)
            elif token.kind == "[":
                self.advance()
                index = self.expression(0)
                self.expect("]")
                node = _Index(node, index, token.position)
            else:
                return node

    def arguments(self) -> tuple[_Node, ...]:
        return self.sequence(")")

    def sequence(self, close: str) -> tuple[_Node, ...]:
        items: list[_Node] = []
        if self.peek().kind == close:
            self.advance()
            return ()
        while True:
            items.append(self.expression(0))
            token = self.advance()
            if token.kind == close:
                return tuple(items)
            if token.kind != ",":
                raise RuleSyntaxError(f"expected ',' or {close!r}, found {_describe(token)}",
                                      token.position)


def _describe(token: _Token) -> str:
    if token.kind == "eof":
        return "the end of the rule"
    if token.kind in ("int", "double", "string", "literal"):
        return "a literal"
    if token.kind == "ident":
        return f"identifier {token.value!r}"
    return repr(token.kind)


# --- Values ----------------------------------------------------------------------------------

_KIND_OF_TYPE: dict[type, str] = {
    bool: "bool", int: "int", float: "double", str: "string", type(None): "null",
    list: "list", tuple: "list", set: "list", frozenset: "list", dict: "map",
}
_NUMERIC = frozenset({"int", "double"})
_ORDERED = frozenset({"int", "double", "string", "bool"})
_SCALAR_TYPES = frozenset({str, int, float, bool, type(None)})


def _kind(value: Any) -> str:
    kind = _KIND_OF_TYPE.get(type(value))
    if kind is not None:
        return kind
    for base in (bool, int, float, str):  # subclasses: IntEnum, StrEnum, ...
        if isinstance(value, base):
            return _KIND_OF_TYPE[base]
    if isinstance(value, Mapping):
        return "map"
    if isinstance(value, list | tuple | set | frozenset):
        return "list"
    return f"unsupported type {type(value).__name__}"


def _equals(a: Any, b: Any) -> bool:
    ka, kb = _kind(a), _kind(b)
    if ka.startswith("unsupported") or kb.startswith("unsupported"):
        raise RuleError(f"cannot compare {ka} and {kb}")
    if ka != kb:
        return ka in _NUMERIC and kb in _NUMERIC and a == b
    if ka == "list":
        if isinstance(a, set | frozenset) or isinstance(b, set | frozenset):
            return len(a) == len(b) and all(any(_equals(x, y) for y in b) for x in a)
        return len(a) == len(b) and all(_equals(x, y) for x, y in zip(a, b, strict=True))
    if ka == "map":
        return len(a) == len(b) and all(
            _has_key(b, k) and _equals(v, _lookup(b, k)) for k, v in a.items())
    return bool(a == b)


def _find_key(mapping: Mapping[Any, Any], key: Any) -> tuple[bool, Any]:
    if type(key) is str:  # the usual case: a str only ever equals a str
        try:
            return True, mapping[key]
        except KeyError:
            return False, None
    if _kind(key) not in ("int", "double", "string", "bool"):
        raise RuleError(f"a map key cannot be a {_kind(key)}")
    for k, v in mapping.items():
        if _equals(key, k):
            return True, v
    return False, None


def _has_key(mapping: Mapping[Any, Any], key: Any) -> bool:
    return _find_key(mapping, key)[0]


def _lookup(mapping: Mapping[Any, Any], key: Any) -> Any:
    found, value = _find_key(mapping, key)
    if not found:
        raise RuleError("no such key")  # the key may be data: never shown
    return value


def _contains(container: Any, item: Any) -> bool:
    kind = _kind(container)
    if kind == "list":
        if type(item) is str:
            return item in container  # hashing or str ==: neither ever equals a non-str
        return any(_equals(item, element) for element in container)
    if kind == "map":
        return _has_key(container, item)
    raise RuleError(f"'in' needs a list or a map on its right, got {kind}")


def _int64(value: int) -> int:
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise RuleError("integer overflow")
    return value


def _check_ordered(a: Any, b: Any, op: str) -> None:
    ka, kb = _kind(a), _kind(b)
    if ka in _NUMERIC and kb in _NUMERIC:
        return
    if ka != kb or ka not in _ORDERED:
        raise RuleError(f"'{op}' is not defined for {ka} and {kb}")


def _arithmetic(op: str, a: Any, b: Any) -> Any:
    ka, kb = _kind(a), _kind(b)
    if ka != kb:
        raise RuleError(f"'{op}' is not defined for {ka} and {kb}")
    if ka == "int":
        if op == "+":
            return _int64(a + b)
        if op == "-":
            return _int64(a - b)
        if op == "*":
            return _int64(a * b)
        if b == 0:
            raise RuleError("division by zero" if op == "/" else "modulus by zero")
        magnitude = abs(a) // abs(b) if op == "/" else abs(a) % abs(b)
        # CEL truncates towards zero; the remainder takes the dividend's sign.
        negative = (a < 0) != (b < 0) if op == "/" else a < 0
        return _int64(-magnitude if negative else magnitude)
    if ka == "double" and op != "%":
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if b == 0:  # IEEE 754, as CEL: ±inf, or NaN for 0/0
            return math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a) * (
                math.copysign(1.0, b))
        return a / b
    if op == "+" and ka == "string":
        return a + b
    if op == "+" and ka == "list":
        return [*a, *b]
    raise RuleError(f"'{op}' is not defined for {ka} and {kb}")


# --- Compilation -----------------------------------------------------------------------------

_METHODS = {"size": 0, "startsWith": 1, "endsWith": 1, "contains": 1, "exists": 2, "all": 2}
_FUNCTIONS = {"size": 1, "has": 1, "int": 1, "string": 1}
_DIGITS = re.compile(r"[+-]?[0-9]+\Z")


def _compile(node: _Node, scope: frozenset[str], depth: int) -> Evaluator:
    if depth > MAX_DEPTH:
        raise RuleSyntaxError(f"the rule nests deeper than {MAX_DEPTH} levels", node.position)
    deeper = depth + 1
    match node:
        case _Literal(value=value):
            if type(value) is int and not _INT64_MIN <= value <= _INT64_MAX:
                raise RuleSyntaxError("integer literal out of the 64-bit range", node.position)
            return lambda act: value
        case _List(items=items):
            return _compile_list(node, [_compile(i, scope, deeper) for i in items])
        case _Ident(name=name):
            if name not in scope:
                raise RuleSyntaxError(
                    f"unknown identifier {name!r}; the variables are "
                    + ", ".join(sorted(VARIABLES)), node.position)
            return _variable(name)
        case _Select(operand=_Ident(name=name), field=field) if name in scope:
            return _select_variable(name, field)
        case _Select(operand=operand, field=field):
            return _select(_compile(operand, scope, deeper), field)
        case _Index(operand=operand, index=index):
            return _index(_compile(operand, scope, deeper), _compile(index, scope, deeper))
        case _Call():
            return _compile_call(node, scope, deeper)
        case _Unary(op=op, operand=operand):
            if op == "-" and isinstance(operand, _Literal) and _kind(operand.value) in _NUMERIC:
                return _compile(_Literal(-operand.value, node.position), scope, deeper)
            return _unary(op, _compile(operand, scope, deeper))
        case _Binary(op=op, left=left, right=right):
            return _binary(op, _compile(left, scope, deeper), _compile(right, scope, deeper),
                           right)
        case _Conditional(condition=condition, then=then, otherwise=otherwise):
            return _conditional(_compile(condition, scope, deeper),
                                _compile(then, scope, deeper), _compile(otherwise, scope, deeper))
    raise AssertionError(node)  # pragma: no cover - the match above is exhaustive


def _variable(name: str) -> Evaluator:
    def variable(act: Activation) -> Any:
        try:
            return act[name]
        except KeyError:
            raise RuleError(f"no value for {name!r}") from None

    return variable


def _compile_list(node: _List, items: list[Evaluator]) -> Evaluator:
    if all(isinstance(i, _Literal) for i in node.items):
        constant = tuple(i.value for i in node.items if isinstance(i, _Literal))
        return lambda act: constant  # a tuple: nothing can change it between requests
    return lambda act: [item(act) for item in items]


def _select(operand: Evaluator, field: str) -> Evaluator:
    def select(act: Activation) -> Any:
        return _field(operand(act), field)

    return select


# Mappings read without an isinstance check: a request's objects and a principal's attributes.
_PLAIN_MAPS = frozenset({dict, MappingProxyType})


def _select_variable(name: str, field: str) -> Evaluator:
    """``name.field`` (``resource.owner_id``), the commonest term of a rule, in one call."""
    variable = _variable(name)

    def select_variable(act: Activation) -> Any:
        value = act[name] if name in act else variable(act)  # variable() raises the error
        if type(value) in _PLAIN_MAPS and field in value:
            return value[field]
        return _field(value, field)

    return select_variable


def _field(value: Any, field: str) -> Any:
    if type(value) is dict or isinstance(value, Mapping):
        try:
            return value[field]
        except KeyError:
            raise RuleError(f"no such key {field!r}") from None
    raise RuleError(f"'.{field}' needs a map, got {_kind(value)}")


def _index(operand: Evaluator, index: Evaluator) -> Evaluator:
    def subscript(act: Activation) -> Any:
        container = operand(act)
        key = index(act)
        kind = _kind(container)
        if kind == "map":
            return _lookup(container, key)
        if kind == "list" and not isinstance(container, set | frozenset):
            if _kind(key) != "int":
                raise RuleError(f"a list index must be an int, got {_kind(key)}")
            if not 0 <= key < len(container):
                raise RuleError("list index out of range")
            return container[key]
        raise RuleError(f"'[]' is not defined for {kind}")

    return subscript


def _unary(op: str, operand: Evaluator) -> Evaluator:
    if op == "!":
        def negate(act: Activation) -> Any:
            value = operand(act)
            if value is True or value is False:
                return not value
            raise RuleError(f"'!' needs a bool, got {_kind(value)}")

        return negate

    def minus(act: Activation) -> Any:
        value = operand(act)
        kind = _kind(value)
        if kind == "int":
            return _int64(-value)
        if kind == "double":
            return -value
        raise RuleError(f"unary '-' is not defined for {kind}")

    return minus


def _outcome(side: Evaluator, act: Activation) -> Any:
    """The side's value, or the error it raised (for CEL's error-absorbing ``&&``/``||``)."""
    try:
        return side(act)
    except RuleError as exc:
        return exc


def _logical(op: str, left: Evaluator, right: Evaluator) -> Evaluator:
    # ``&&``: false wins over errors and non-bools, whichever side it is on; ``||``: true.
    absorbing = op == "||"

    def logical(act: Activation) -> Any:
        a = _outcome(left, act)
        if a is absorbing:
            return a
        b = _outcome(right, act)
        if b is absorbing:
            return b
        for value in (a, b):
            if isinstance(value, RuleError):
                raise value
            if value is not (not absorbing):
                raise RuleError(f"'{op}' needs bools, got {_kind(value)}")
        return not absorbing

    return logical


def _binary(op: str, left: Evaluator, right: Evaluator, right_node: _Node) -> Evaluator:
    if op in ("&&", "||"):
        return _logical(op, left, right)
    if op in ("==", "!="):
        expected = op == "=="

        def equality(act: Activation) -> bool:
            a = left(act)
            b = right(act)
            if type(a) is type(b) and type(a) in _SCALAR_TYPES:
                return (a == b) is expected
            return _equals(a, b) is expected

        return equality
    if op == "in":
        constant = _constant_strings(right_node)
        if constant is not None:
            constant_list = tuple(constant)

            def member_of_constant(act: Activation) -> bool:
                item = left(act)
                if type(item) is str:
                    return item in constant
                return _contains(constant_list, item)

            return member_of_constant
        return lambda act: _contains(right(act), left(act))
    if op in ("<", "<=", ">", ">="):
        return _ordering(op, left, right)
    return lambda act: _arithmetic(op, left(act), right(act))


def _constant_strings(node: _Node) -> frozenset[str] | None:
    if isinstance(node, _List) and all(
            isinstance(i, _Literal) and type(i.value) is str for i in node.items):
        return frozenset(i.value for i in node.items if isinstance(i, _Literal))
    return None


def _ordering(op: str, left: Evaluator, right: Evaluator) -> Evaluator:
    def less(act: Activation) -> bool:
        a, b = left(act), right(act)
        _check_ordered(a, b, op)
        return bool(a < b)

    def less_equal(act: Activation) -> bool:
        a, b = left(act), right(act)
        _check_ordered(a, b, op)
        return bool(a <= b)

    def greater(act: Activation) -> bool:
        a, b = left(act), right(act)
        _check_ordered(a, b, op)
        return bool(a > b)

    def greater_equal(act: Activation) -> bool:
        a, b = left(act), right(act)
        _check_ordered(a, b, op)
        return bool(a >= b)

    return {"<": less, "<=": less_equal, ">": greater, ">=": greater_equal}[op]


def _conditional(condition: Evaluator, then: Evaluator, otherwise: Evaluator) -> Evaluator:
    def choose(act: Activation) -> Any:
        value = condition(act)
        if value is True:
            return then(act)
        if value is False:
            return otherwise(act)
        raise RuleError(f"'?:' needs a bool condition, got {_kind(value)}")

    return choose


def _compile_call(node: _Call, scope: frozenset[str], depth: int) -> Evaluator:
    name, target = node.function, node.target
    arity = _FUNCTIONS.get(name) if target is None else _METHODS.get(name)
    if arity is None:
        form = f"{name}()" if target is None else f".{name}()"
        raise RuleSyntaxError(f"unknown function {form}", node.position)
    if len(node.args) != arity:
        raise RuleSyntaxError(f"{name}() takes {arity} argument(s), got {len(node.args)}",
                              node.position)
    if name == "has":
        field = node.args[0]
        if not isinstance(field, _Select):
            raise RuleSyntaxError("has() takes a field selection, such as has(resource.owner)",
                                  node.position)
        return _has(_compile(field.operand, scope, depth), field.field)
    if name in ("exists", "all"):
        if target is None:  # _METHODS holds only methods: unreachable
            raise RuleSyntaxError(f"{name}() is called on a list", node.position)
        variable = node.args[0]
        if not isinstance(variable, _Ident):
            raise RuleSyntaxError(f"the first argument of {name}() is a variable name",
                                  node.args[0].position)
        if variable.name in VARIABLES:
            raise RuleSyntaxError(f"{variable.name!r} would hide a variable; choose another name",
                                  variable.position)
        predicate = _compile(node.args[1], scope | {variable.name}, depth)
        return _comprehension(name, _compile(target, scope, depth), variable.name, predicate)
    # A method's target is its first argument: x.size() is size(x).
    args = [_compile(target, scope, depth)] if target is not None else []
    args.extend(_compile(a, scope, depth) for a in node.args)
    if name == "size":
        return _size(args[0])
    if name == "int":
        return _to_int(args[0])
    if name == "string":
        return _to_string(args[0])
    return _string_test(name, args[0], args[1])


def _has(operand: Evaluator, field: str) -> Evaluator:
    def has(act: Activation) -> bool:
        value = operand(act)
        if isinstance(value, Mapping):
            return field in value
        raise RuleError(f"has() needs a map, got {_kind(value)}")

    return has


def _comprehension(kind: str, target: Evaluator, variable: str,
                   predicate: Evaluator) -> Evaluator:
    absorbing = kind == "exists"  # exists: a true absorbs errors; all: a false does

    def comprehension(act: Activation) -> bool:
        items = target(act)
        if _kind(items) not in ("list", "map"):
            raise RuleError(f"{kind}() needs a list or a map, got {_kind(items)}")
        local = dict(act)
        error: RuleError | None = None
        for item in items:
            local[variable] = item
            try:
                value = predicate(local)
            except RuleError as exc:
                error = error or exc
                continue
            if value is absorbing:
                return bool(absorbing)
            if value is not (not absorbing):
                error = error or RuleError(f"{kind}() needs a bool predicate, got {_kind(value)}")
        if error is not None:
            raise error
        return not absorbing

    return comprehension


def _size(operand: Evaluator) -> Evaluator:
    def size(act: Activation) -> int:
        value = operand(act)
        if _kind(value) in ("string", "list", "map"):
            return len(value)
        raise RuleError(f"size() is not defined for {_kind(value)}")

    return size


def _to_int(operand: Evaluator) -> Evaluator:
    def to_int(act: Activation) -> int:
        value = operand(act)
        kind = _kind(value)
        if kind == "int":
            return int(value)
        if kind == "double":
            if not math.isfinite(value):
                raise RuleError("int() of a non-finite double")
            return _int64(int(value))
        if kind == "string":
            if not _DIGITS.match(value):
                raise RuleError("int() of a string that is not an integer")
            return _int64(int(value))
        raise RuleError(f"int() is not defined for {kind}")

    return to_int


def _to_string(operand: Evaluator) -> Evaluator:
    def to_string(act: Activation) -> str:
        value = operand(act)
        kind = _kind(value)
        if kind == "string":
            return str(value)
        if kind == "bool":
            return "true" if value else "false"
        if kind in _NUMERIC:
            return repr(int(value) if kind == "int" else float(value))
        raise RuleError(f"string() is not defined for {kind}")

    return to_string


def _string_test(name: str, target: Evaluator, argument: Evaluator) -> Evaluator:
    def test(act: Activation) -> bool:
        text, part = target(act), argument(act)
        if _kind(text) != "string" or _kind(part) != "string":
            raise RuleError(f".{name}() is defined for strings, got {_kind(text)} and "
                            f"{_kind(part)}")
        if name == "startsWith":
            return bool(text.startswith(part))
        if name == "endsWith":
            return bool(text.endswith(part))
        return part in text

    return test
