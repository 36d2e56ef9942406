"""The public surface of the package, pinned: a change to it is a decision, not an accident."""

from __future__ import annotations

import apiforge


def test_top_level_exports() -> None:
    assert sorted(apiforge.__all__) == sorted([
        "ApiError", "ApiForgeError", "ConfigurationError", "FieldError", "Policy", "Principal",
        "RequestContext", "StoreError", "ValidationFailed", "__version__", "get_context",
        "load_policy", "protect", "verify_token", "authorize", "require", "requires",
    ])
    for name in apiforge.__all__:
        assert hasattr(apiforge, name), name


def test_protect_is_the_library_entry_point() -> None:
    from apiforge.protection import protect

    assert apiforge.protect is protect


def test_every_public_module_declares_its_surface() -> None:
    import importlib
    import pkgutil

    missing = []
    for info in pkgutil.walk_packages(apiforge.__path__, "apiforge."):
        leaf = info.name.rsplit(".", 1)[-1]
        if leaf.startswith("_") or ".migrations" in info.name or info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        if not hasattr(module, "__all__"):
            missing.append(info.name)
    assert missing == [], f"modules without __all__: {missing}"
