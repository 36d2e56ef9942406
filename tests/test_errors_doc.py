"""Every problem code the code can send is documented in docs/errors.md."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

from apiforge.jsonguard import JsonRejectCode

ROOT = Path(__file__).resolve().parents[1]
ERROR_CLASSES = ("BadRequest|Unauthorized|Forbidden|NotFound|ValidationFailed|"
                 "ServiceUnavailable|TooManyRequests|JsonRejected|ApiError|InternalError|"
                 "PayloadTooLarge|GatewayTimeout|RequestTimeout")
PATTERNS = [
    re.compile(rf"\b(?:{ERROR_CLASSES})\(\s*\"([a-z_]+)\""),
    re.compile(r"^\s+code = \"([a-z_]+)\"", re.MULTILINE),
    re.compile(r"_raw_problem\(\s*\d+,\s*\"[^\"]*\",\s*\"([a-z_]+)\""),
]


def codes_in_source() -> set[str]:
    codes = set(get_args(JsonRejectCode))
    for path in (ROOT / "src" / "apiforge").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for pattern in PATTERNS:
            codes.update(pattern.findall(text))
    return codes


def test_every_code_is_documented() -> None:
    documented = set(re.findall(r"^### ([a-z_]+)$",
                                (ROOT / "docs" / "errors.md").read_text(encoding="utf-8"),
                                re.MULTILINE))
    codes = codes_in_source()
    assert {"bad_path", "json_duplicate_key", "https_required", "too_many_connections",
            "deadline_exceeded"} <= codes  # the scan finds codes of every kind
    assert codes - documented == set()
