"""Instructions a server spends per request, counted by valgrind: a measure that noise cannot move.

    python bench/instructions.py                              # every variant with a goal
    python bench/instructions.py --variants bare,validated --requests 500

wrk's req/s on a shared machine moves by 10-20 % from one minute to the next; the number of
instructions a server executes for a request does not (two counts agree within about 2 %). Each
variant's server (bench/serve.py, exactly as `make bench` runs it) starts under callgrind with
instrumentation off; a client sends warm-up requests over one keep-alive connection, switches
counting on (`callgrind_control -i on`), sends N more, and switches it off. The count divided by
N is the server's work per request: uvicorn, the event loop, the app and every layer.

The ratio `baseline / variant` of these counts predicts the throughput ratio `make bench`
reports to within a few hundredths (the page's figures stay the ones that count): use it to tell
whether a change made a request cheaper, before and after, on any machine. It does not see
cache misses or system calls, so it cannot replace the load benchmark.

Needs valgrind (`apt-get install valgrind`). A server under valgrind runs ~50x slower: about
20 s per variant and route with the defaults.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from variants import BASELINE, GOALS, ROUTES, Route, get_variant

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
SERVE_SCRIPT = BENCH_DIR / "serve.py"
READY_TIMEOUT_S = 300.0  # start-up under valgrind: imports and policy compilation, slowed
WARMUP_REQUESTS = 100
_READY = re.compile(r"^ready variant=\S+ url=http://127\.0\.0\.1:(\d+)", re.MULTILINE)
_COLLECTED = re.compile(r"Collected : (\d+)")
# The plain-http variants with throughput goals, and `no-authz` (what authorization adds).
GOAL_VARIANTS = [*(name for name in dict.fromkeys(variant for variant, _ in GOALS)
                   if get_variant(name).scheme == "http"), "no-authz"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--variants", default=f"{BASELINE},{','.join(GOAL_VARIANTS)}",
                        help="comma-separated variants; the first is the baseline of the ratios")
    parser.add_argument("--routes", default=",".join(r.name for r in ROUTES),
                        help="comma-separated routes, as 'GET /v1/users/me'")
    parser.add_argument("--requests", type=int, default=300, help="counted requests per run")
    parser.add_argument("--json", type=Path, help="also write the counts to this file")
    parser.add_argument("--markdown", type=Path,
                        help="also write a report page (docs/instructions.md, say)")
    return parser.parse_args(argv)


def count(variant_name: str, route: Route, requests: int, work: Path) -> int:
    """Instructions per request of one variant's server on one route."""
    variant = get_variant(variant_name)
    if variant.scheme != "http":
        raise SystemExit(f"{variant_name}: only http variants can be counted")
    data_dir = work / "data"
    log = work / "server.log"
    valgrind_log = work / "valgrind.log"
    command = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
               f"--callgrind-out-file={work / 'callgrind.out'}", f"--log-file={valgrind_log}",
               sys.executable, str(SERVE_SCRIPT), "--variant", variant_name, "--port", "0",
               "--data-dir", str(data_dir)]
    # Everything runs ~50x slower under valgrind: give the rate-limit store time to answer.
    environment = {**os.environ, "APIFORGE_BENCH_STORE_TIMEOUT": "5"}
    with log.open("wb") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_DIR,
                                  start_new_session=True, env=environment)
    try:
        port = _wait_ready(server, log)
        headers = dict(variant.headers(data_dir)) if variant.headers is not None else {}
        if route.content_type:
            headers["Content-Type"] = route.content_type
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        _send(connection, route, headers, WARMUP_REQUESTS)
        _instrument(server.pid, "on")
        _send(connection, route, headers, requests)
        _instrument(server.pid, "off")
        connection.close()
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    report = valgrind_log.read_text(errors="replace")
    found = _COLLECTED.search(report)
    if found is None:  # the work directory goes away: show valgrind's own words here
        raise SystemExit(f"{variant_name}: callgrind reported no count; it said:\n"
                         f"{report[-2000:]}")
    return round(int(found.group(1)) / requests)


def _wait_ready(server: subprocess.Popen[bytes], log: Path) -> int:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited before it was ready; its log:\n"
                             f"{log.read_text(errors='replace')[-2000:]}")
        found = _READY.search(log.read_text(errors="replace"))
        if found:
            return int(found.group(1))
        time.sleep(0.2)
    raise SystemExit(f"the server was not ready after {READY_TIMEOUT_S:.0f} s")


def _send(connection: http.client.HTTPConnection, route: Route, headers: dict[str, str],
          requests: int) -> None:
    for _ in range(requests):
        connection.request(route.method, route.path, body=route.body, headers=headers)
        response = connection.getresponse()
        body = response.read()
        if not 200 <= response.status < 300:
            raise SystemExit(f"{route.name} answered {response.status}: {body[:300]!r}")


def _instrument(pid: int, state: str) -> None:
    subprocess.run(["callgrind_control", "-i", state, str(pid)], check=True,
                   capture_output=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind is not installed: apt-get install valgrind", file=sys.stderr)
        return 2
    names = [name.strip() for name in args.variants.split(",") if name.strip()]
    wanted = [name.strip() for name in args.routes.split(",") if name.strip()]
    routes = [route for route in ROUTES if route.name in wanted]
    if len(routes) != len(wanted):
        known = ", ".join(route.name for route in ROUTES)
        print(f"unknown route in {args.routes!r} (known: {known})", file=sys.stderr)
        return 2
    counts: dict[str, dict[str, int]] = {}
    total = len(names) * len(routes)
    for index, (name, route) in enumerate(
            ((name, route) for name in names for route in routes), start=1):
        print(f"[{index}/{total}] {name}  {route.name} ...", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(prefix="apiforge-instructions-") as work:
            counts.setdefault(name, {})[route.name] = count(name, route, args.requests,
                                                            Path(work))
    baseline = names[0]
    print(f"{'variant':<24}" + "".join(f"{route.name:>30}" for route in routes))
    for name in names:
        cells = []
        for route in routes:
            value = counts[name][route.name]
            ratio = counts[baseline][route.name] / value
            cells.append(f"{value:>18,} ({ratio:.3f})")
        print(f"{name:<24}" + "".join(f"{cell:>30}" for cell in cells))
    if args.json is not None:
        args.json.write_text(json.dumps({"requests": args.requests, "baseline": baseline,
                                         "instructions_per_request": counts}, indent=2) + "\n")
    if args.markdown is not None:
        args.markdown.write_text(render_markdown(counts, routes, baseline, args.requests))
    return 0


def render_markdown(counts: dict[str, dict[str, int]], routes: list[Route], baseline: str,
                    requests: int) -> str:
    """The report page: the counts, their ratios to the baseline, and how they were made."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_DIR,
                            capture_output=True, text=True, check=False).stdout.strip()
    lines = [
        "# Instructions per request",
        "",
        "The work a server does for one request, counted by valgrind (`make bench-instructions`,",
        "`bench/instructions.py`): unlike req/s on a shared machine, two counts of the same code",
        "agree within about 2 %. The ratio `baseline / variant` tracks the throughput ratio of",
        "[the load benchmark](benchmarks.md) within a few hundredths; that page's figures are",
        "the ones the goals are measured by. How it counts: `bench/README.md`.",
        "",
        f"Generated {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} at commit `{commit}`,"
        f" Python {sys.version.split()[0]}, {requests} counted requests per variant and route,"
        " each variant's server as `make bench` serves it.",
        "",
        "| variant | " + " | ".join(f"`{route.name}`" for route in routes) + " |",
        "| --- | " + " | ".join("---:" for _ in routes) + " |",
    ]
    for name, row in counts.items():
        cells = []
        for route in routes:
            value = row[route.name]
            cells.append(f"{value:,} ({counts[baseline][route.name] / value:.3f})")
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    lines += ["", f"In parentheses: `{baseline}`'s count divided by the variant's.", "",
              "Work on a timer is counted in proportion to wall time, which valgrind stretches"
              " about 50x: the demo re-reads its identity records every second, so the variants"
              " with authentication carry tens of thousands of instructions a request of it here,"
              " where a real server spends well under 1 % of a core on it. Their ratios read a"
              " little low.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
