"""Authorization: roles, CEL rules and field visibility, decided as plain data (no HTTP).

``Authorizer(settings)`` compiles the policy's ``authorization`` section once; the pipeline
asks it for :class:`Decision`s. ``apiforge.access.tools`` holds the domain side of
``apiforge policy explain`` and ``apiforge policy test``.
"""

from __future__ import annotations

from apiforge.access.engine import Authorizer, Decision, Trace
from apiforge.access.expressions import Expression, RuleError, RuleSyntaxError, compile_expression
from apiforge.access.settings import AuthorizationSettings, RouteAuthorization

__all__ = [
    "AuthorizationSettings",
    "Authorizer",
    "Decision",
    "Expression",
    "RouteAuthorization",
    "RuleError",
    "RuleSyntaxError",
    "Trace",
    "compile_expression",
]
