"""Known-vulnerability check of the locked dependencies through PyPI's project pages.

pip-audit asks PyPI about each pinned release; where the per-release endpoint cannot be
reached, it reports every package as "could not be audited" and passes. A project's own page
(`/pypi/NAME/json`) lists the known vulnerabilities of its latest release, so for every pin
that is the latest release this gives a real answer. Exit 1 when a pinned release has a known
vulnerability; pins that are not the latest release are listed as unchecked.

    python scripts/audit_latest.py constraints.txt
"""

from __future__ import annotations

import concurrent.futures
import json
import sys
import urllib.request
from pathlib import Path

INDEX = "https://pypi.org/pypi/{name}/json"


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            found[name.strip()] = version.strip()
    return found


def project(name: str) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(INDEX.format(name=name), timeout=15) as answer:  # noqa: S310
            return json.load(answer)  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


def main() -> int:
    locked = pins(Path(sys.argv[1] if len(sys.argv) > 1 else "constraints.txt"))
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        pages = dict(zip(locked, pool.map(project, locked), strict=True))
    vulnerable, unchecked, unreachable = [], [], []
    for name, version in sorted(locked.items()):
        page = pages[name]
        if page is None:
            unreachable.append(name)
            continue
        info = page.get("info")
        latest = info.get("version") if isinstance(info, dict) else None
        if latest != version:
            unchecked.append(f"{name}=={version} (latest {latest})")
            continue
        for vulnerability in page.get("vulnerabilities") or []:  # type: ignore[union-attr]
            vulnerable.append(f"{name}=={version}: {vulnerability.get('id')}"
                              f" fixed in {vulnerability.get('fixed_in')}")
    checked = len(locked) - len(unchecked) - len(unreachable)
    print(f"{checked} of {len(locked)} pinned releases checked against PyPI's advisories")
    for line in unchecked:
        print(f"  not the latest release, unchecked here: {line}")
    if unreachable:
        print(f"  PyPI could not be reached for: {', '.join(unreachable)}")
    for line in vulnerable:
        print(f"VULNERABLE {line}")
    return 1 if vulnerable else 0


if __name__ == "__main__":
    sys.exit(main())
