"""The public surface of ``apiforge.access``, pinned: the pipeline is built on it."""

from __future__ import annotations

import apiforge.access
from apiforge.access import engine, expressions, settings, tools


def test_package_surface() -> None:
    assert sorted(apiforge.access.__all__) == [
        "AuthorizationSettings", "Authorizer", "Decision", "Expression", "RouteAuthorization",
        "RuleError", "RuleSyntaxError", "Trace", "compile_expression",
    ]


def test_module_surfaces() -> None:
    assert engine.__all__ == ["Authorizer", "Decision", "Trace"]
    assert "compile_expression" in expressions.__all__
    assert {"AuthorizationSettings", "RouteAuthorization"} <= set(settings.__all__)
    assert {"explain", "run_cases", "Case", "CaseReport", "Explanation"} <= set(tools.__all__)


def test_engine_imports_nothing_of_http() -> None:
    from pathlib import Path

    source = "\n".join(Path(m.__file__ or "").read_text(encoding="utf-8")
                       for m in (engine, expressions, settings))
    for name in ("starlette", "uvicorn", "httpx", "apiforge.core.pipeline",
                 "apiforge.core.routing", "apiforge.layers"):
        assert f"import {name}" not in source and f"from {name}" not in source
