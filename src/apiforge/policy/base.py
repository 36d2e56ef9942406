"""The base of every policy model: frozen, unknown keys refused, field docstrings kept."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["PolicyModel"]


class PolicyModel(BaseModel):
    """Base of every section of the policy.

    Unknown keys are refused (``extra="forbid"``) so a misspelt key can never silently leave a
    protection off; the docstring under each field is its documentation in ``docs/policy.md``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
