"""Load benchmark: every variant in bench/variants.py against the same routes, with wrk.

    python bench/run.py              # defaults: 5 rounds x 5 s, 32 connections
    python bench/run.py --quick      # 3 rounds x 2 s
    python bench/run.py --goals      # also check the minimum ratios in variants.GOALS

One server process per variant, each on its own fresh data directory, pinned to one core while
wrk runs on another, so the client never steals the server's CPU. Every round runs each
(route, variant) pair once in a shuffled order: drift on a shared machine (other tenants,
thermal limits) then lands on all variants alike instead of on whichever ran last. Each round
gives a ratio variant/baseline for the same route; the report keeps the median of those ratios
and the median req/s and latencies, which one noisy run cannot move.

Writes bench/results.json and docs/benchmarks.md. Exit status: 0 all clean, 1 some run had
non-2xx responses or socket errors, 2 setup failed, 3 a goal was missed (with --goals),
130 interrupted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import importlib.metadata
import json
import os
import platform
import random
import re
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from variants import BASELINE, GOALS, ROUTES, VARIANTS, Route, Variant

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
SERVE_SCRIPT = BENCH_DIR / "serve.py"
DEFAULT_JSON = BENCH_DIR / "results.json"
DEFAULT_MARKDOWN = REPO_DIR / "docs" / "benchmarks.md"

SERVER_READY_TIMEOUT_S = 60.0
SERVER_STOP_TIMEOUT_S = 5.0
# Start-up plus probe per server, and process launch plus parsing per wrk run: only for the
# estimate printed up front.
SERVER_OVERHEAD_S = 2.0
RUN_OVERHEAD_S = 0.15

EXIT_OK, EXIT_RUN_ERRORS, EXIT_SETUP, EXIT_GOAL_MISSED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

VERSION_PACKAGES = ("apiforge", "starlette", "uvicorn", "uvloop", "httptools", "pydantic", "orjson")


class SetupError(Exception):
    """The benchmark cannot run; the message says why and what to do."""


# --------------------------------------------------------------------------- wrk


@dataclass(frozen=True, slots=True)
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: dict[str, int]

    @property
    def socket_error_count(self) -> int:
        return sum(self.socket_errors.values())

    @property
    def clean(self) -> bool:
        return self.requests > 0 and self.non_2xx == 0 and self.socket_error_count == 0

    def problems(self) -> str:
        parts = []
        if self.requests == 0:
            parts.append("no completed requests")
        if self.non_2xx:
            parts.append(f"{self.non_2xx:,} non-2xx")
        if self.socket_error_count:
            detail = ", ".join(f"{k} {v}" for k, v in self.socket_errors.items() if v)
            parts.append(f"socket errors ({detail})")
        return "; ".join(parts)


_UNIT_TO_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_RE_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_RE_PERCENTILE = re.compile(r"^\s+(\d+(?:\.\d+)?)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_RE_REQUESTS = re.compile(r"^\s+(\d+) requests in ", re.MULTILINE)
_RE_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_RE_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def parse_wrk(output: str) -> WrkResult:
    """Read req/s, p50/p99, the request count and the error lines from wrk's report.

    wrk prints the error lines only when there were errors, so their absence means zero.
    Its "Non-2xx or 3xx" counter counts statuses >= 400; redirects are caught by the probe.
    """
    rps = _RE_RPS.search(output)
    requests = _RE_REQUESTS.search(output)
    if rps is None or requests is None:
        raise ValueError(f"unrecognised wrk output:\n{output}")
    percentiles = {
        float(p): float(value) * _UNIT_TO_MS[unit]
        for p, value, unit in _RE_PERCENTILE.findall(output)
    }
    if 50.0 not in percentiles or 99.0 not in percentiles:
        raise ValueError(f"wrk output has no latency distribution (--latency):\n{output}")
    non_2xx = _RE_NON_2XX.search(output)
    sockets = _RE_SOCKET.search(output)
    names = ("connect", "read", "write", "timeout")
    return WrkResult(
        rps=float(rps.group(1)),
        p50_ms=percentiles[50.0],
        p99_ms=percentiles[99.0],
        requests=int(requests.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors={
            name: int(sockets.group(i + 1)) if sockets else 0 for i, name in enumerate(names)
        },
    )


def ensure_wrk() -> str:
    """Path to wrk, installing it with apt-get when running as root on a Debian-like system."""
    found = shutil.which("wrk")
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        raise SetupError(
            "wrk is not installed. Install it, then run again:\n"
            "  Debian/Ubuntu: sudo apt-get install -y wrk\n"
            "  macOS:         brew install wrk\n"
            "  from source:   https://github.com/wg/wrk (make, then put wrk on PATH)"
        )
    log("wrk not found: installing it with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "--no-install-recommends", "wrk"]
    if subprocess.run(install, env=env, check=False).returncode != 0:
        # A fresh container often has empty package lists; refresh once and retry.
        subprocess.run([apt, "update"], env=env, check=False)
        subprocess.run(install, env=env, check=False)
    found = shutil.which("wrk")
    if found is None:
        raise SetupError(
            "installing wrk with apt-get failed; install it by hand (apt-get install wrk)"
        )
    return found


def wrk_version(wrk: str) -> str:
    # `wrk -v` prints its banner and usage, then exits non-zero.
    done = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
    first = (done.stdout or done.stderr).strip().splitlines()
    if not first:
        return "unknown"
    # "wrk debian/4.1.0-3+b2 [epoll] Copyright (C) 2012 Will Glozer" -> "debian/4.1.0-3+b2 [epoll]"
    return first[0].split(" Copyright")[0].removeprefix("wrk ").strip()


# --------------------------------------------------------------------------- pinning


@dataclass(frozen=True, slots=True)
class Pinning:
    server_cpus: str | None
    client_cpus: str | None

    def prefix(self, cpus: str | None) -> list[str]:
        return ["taskset", "-c", cpus] if cpus is not None else []

    def describe(self) -> dict[str, str]:
        if self.server_cpus is None:
            return {"server": "none", "client": "none"}
        return {"server": f"cpu {self.server_cpus}", "client": f"cpu {self.client_cpus}"}


def _cpu_set(spec: str) -> set[int]:
    cpus: set[int] = set()
    for part in spec.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def choose_pinning(args: argparse.Namespace) -> Pinning:
    if args.no_pin:
        return Pinning(None, None)
    allowed = os.sched_getaffinity(0)
    wanted = _cpu_set(args.server_cpus) | _cpu_set(args.client_cpus)
    if shutil.which("taskset") is None:
        log("warning: taskset not found; server and wrk are not pinned (results get noisier)")
        return Pinning(None, None)
    if not wanted <= allowed:
        log(
            f"warning: cpus {sorted(wanted)} are not all available (allowed {sorted(allowed)}); "
            "server and wrk are not pinned"
        )
        return Pinning(None, None)
    if _cpu_set(args.server_cpus) & _cpu_set(args.client_cpus):
        raise SetupError(
            "--server-cpus and --client-cpus overlap: wrk would compete with the server"
        )
    return Pinning(args.server_cpus, args.client_cpus)


# --------------------------------------------------------------------------- servers


@dataclass(slots=True)
class Server:
    variant: Variant
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:]) or "(server log is empty)"

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise SetupError(
                f"server {self.variant.name} exited with status {code}; its log ends with:\n"
                f"{self.log_tail()}"
            )


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for 127.0.0.1, for https variants."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return certfile, keyfile


def start_server(
    variant: Variant, work_dir: Path, pinning: Pinning, tls_files: tuple[Path, Path] | None
) -> Server:
    data_dir = work_dir / variant.name / "data"
    data_dir.mkdir(parents=True)
    log_path = work_dir / variant.name / "server.log"
    command = [
        *pinning.prefix(pinning.server_cpus),
        sys.executable,
        str(SERVE_SCRIPT),
        "--variant",
        variant.name,
        "--port",
        "0",
        "--data-dir",
        str(data_dir),
    ]
    if variant.scheme == "https":
        if tls_files is None:
            raise SetupError(f"variant {variant.name} needs a certificate")
        command += ["--certfile", str(tls_files[0]), "--keyfile", str(tls_files[1])]
    with log_path.open("wb") as log_file:
        # Output goes to a file, not a pipe nobody drains during the runs: a full pipe would
        # stall the server mid-benchmark. Their own process group keeps Ctrl-C away from them,
        # so the harness stops them itself, in order.
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=REPO_DIR,
            start_new_session=True,
        )
    return Server(variant=variant, data_dir=data_dir, log_path=log_path, process=process)


_RE_READY = re.compile(r"^ready variant=(\S+) url=(\S+)", re.MULTILINE)


def wait_ready(server: Server) -> None:
    deadline = time.monotonic() + SERVER_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        server.check_alive()
        match = _RE_READY.search(server.log_path.read_text(errors="replace"))
        if match:
            server.url = match.group(2)
            if server.variant.headers is not None:
                server.headers = dict(server.variant.headers(server.data_dir))
            return
        time.sleep(0.05)
    raise SetupError(
        f"server {server.variant.name} was not ready after {SERVER_READY_TIMEOUT_S:.0f} s; "
        f"its log ends with:\n{server.log_tail()}"
    )


def stop_servers(servers: Sequence[Server]) -> None:
    """SIGTERM every server, then SIGKILL whichever has not exited in time."""
    for server in servers:
        if server.process.poll() is None:
            server.process.terminate()
    deadline = time.monotonic() + SERVER_STOP_TIMEOUT_S
    for server in servers:
        try:
            server.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


def probe(server: Server, route: Route) -> str | None:
    """One request before any load: None if it answers 2xx, else what it answered.

    wrk only counts statuses >= 400, and a benchmark of 401s or redirects measures nothing,
    so each route is checked once by hand first.
    """
    parts = urlsplit(server.url)
    host, port = parts.hostname or "127.0.0.1", parts.port
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        # The harness made this certificate itself a moment ago; there is nothing to verify.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        connection = http.client.HTTPSConnection(host, port, timeout=10, context=context)
    else:
        connection = http.client.HTTPConnection(host, port, timeout=10)
    headers = dict(server.headers)
    if route.content_type:
        headers["Content-Type"] = route.content_type
    try:
        connection.request(route.method, route.path, body=route.body, headers=headers)
        response = connection.getresponse()
        body = response.read(300)
    except OSError as exc:
        return f"request failed: {exc}"
    finally:
        connection.close()
    if 200 <= response.status < 300:
        return None
    return f"{response.status} {response.reason}: {body.decode(errors='replace')}"


# --------------------------------------------------------------------------- runs


@dataclass(frozen=True, slots=True)
class Run:
    round: int
    variant: str
    route: str
    result: WrkResult


def run_wrk(
    wrk: str,
    server: Server,
    route: Route,
    *,
    connections: int,
    duration_s: int,
    pinning: Pinning,
) -> WrkResult:
    command = [
        *pinning.prefix(pinning.client_cpus),
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{duration_s}s",
        "--latency",
    ]
    for name, value in server.headers.items():
        command += ["-H", f"{name}: {value}"]
    if route.script is not None:
        command += ["-s", str(route.script)]
    command.append(server.url + route.path)
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=False,
        timeout=duration_s + 30,
        start_new_session=True,
    )
    if done.returncode != 0:
        raise SetupError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout}")
    server.check_alive()
    return parse_wrk(done.stdout)


# --------------------------------------------------------------------------- summary


@dataclass(slots=True)
class Row:
    variant: Variant
    route: Route
    runs: list[WrkResult]
    ratios: list[float]
    goal: float | None

    @property
    def used(self) -> list[WrkResult]:
        # Runs with errors would average the cost of error answers into the figures; they are
        # left out and counted. Only when every run failed are they used, and marked.
        clean = [r for r in self.runs if r.clean]
        return clean or self.runs

    @property
    def flagged(self) -> int:
        return sum(1 for r in self.runs if not r.clean)

    @property
    def rps(self) -> float:
        return statistics.median(r.rps for r in self.used)

    @property
    def p50_ms(self) -> float:
        return statistics.median(r.p50_ms for r in self.used)

    @property
    def p99_ms(self) -> float:
        return statistics.median(r.p99_ms for r in self.used)

    @property
    def ratio(self) -> float | None:
        return statistics.median(self.ratios) if self.ratios else None

    @property
    def goal_met(self) -> bool | None:
        if self.goal is None:
            return None
        return self.ratio is not None and self.ratio >= self.goal

    def to_json(self) -> dict[str, Any]:
        ratio = self.ratio
        return {
            "variant": self.variant.name,
            "route": self.route.name,
            "rps_median": round(self.rps, 1),
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "ratio_median": round(ratio, 4) if ratio is not None else None,
            "ratios": [round(r, 4) for r in self.ratios],
            "rps_rounds": [round(r.rps, 1) for r in self.runs],
            "goal": (
                {"min_ratio": self.goal, "met": self.goal_met} if self.goal is not None else None
            ),
            "errors": {
                "runs": len(self.runs),
                "runs_flagged": self.flagged,
                "non_2xx": sum(r.non_2xx for r in self.runs),
                "socket": {
                    name: sum(r.socket_errors[name] for r in self.runs)
                    for name in ("connect", "read", "write", "timeout")
                },
            },
        }


def summarise(
    runs: list[Run], variants: list[Variant], baseline: str, with_goals: bool
) -> list[Row]:
    by_key = {(run.round, run.variant, run.route): run.result for run in runs}
    rounds = sorted({run.round for run in runs})
    rows = []
    for route in ROUTES:
        for variant in variants:
            results, ratios = [], []
            for n in rounds:
                result = by_key.get((n, variant.name, route.name))
                if result is None:
                    continue
                results.append(result)
                base = by_key.get((n, variant.baseline or baseline, route.name))
                # A ratio is only meaningful when both sides of the round answered cleanly.
                if base is not None and base.clean and result.clean and base.rps > 0:
                    ratios.append(result.rps / base.rps)
            if results:
                goal = GOALS.get((variant.name, route.kind)) if with_goals else None
                rows.append(Row(variant, route, results, ratios, goal))
    return rows


# --------------------------------------------------------------------------- environment


def machine_info() -> dict[str, Any]:
    cpu_model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "cpu": cpu_model,
        "cores": os.cpu_count(),
        "memory": memory,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        # The machine is shared: the load before the run says how quiet it was.
        "load_average_at_start": [round(x, 2) for x in load],
    }


def package_versions(wrk: str) -> dict[str, str]:
    versions = {}
    for name in VERSION_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    versions["wrk"] = wrk_version(wrk)
    return versions


def git_commit() -> str | None:
    git = shutil.which("git")
    if git is None:
        return None
    done = subprocess.run(
        [git, "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return (done.stdout.strip() or None) if done.returncode == 0 else None


# --------------------------------------------------------------------------- reports


def _ratio_text(row: Row, baseline: str) -> str:
    if row.variant.name == (row.variant.baseline or baseline):
        return "1.00 (baseline)"
    return f"{row.ratio:.2f}" if row.ratio is not None else "n/a"


def _ratio_range(row: Row, baseline: str) -> str:
    # The spread of the per-round ratios shows how much to trust the median on a noisy machine.
    if row.variant.name == (row.variant.baseline or baseline) or not row.ratios:
        return ""
    return f"{min(row.ratios):.2f}-{max(row.ratios):.2f}"


def _notes(row: Row) -> str:
    if not row.flagged:
        return ""
    if row.flagged == len(row.runs):
        return f"all {len(row.runs)} runs had errors: figures are of error answers"
    return f"{row.flagged}/{len(row.runs)} runs had errors, left out"


def render_markdown(report: dict[str, Any], rows: list[Row], baseline: str) -> str:
    settings, machine, versions = report["settings"], report["machine"], report["versions"]
    with_goals = settings["goals"]
    pin = settings["pinning"]
    pinning_text = (
        f"The server is pinned to {pin['server']} and wrk to {pin['client']} with `taskset`,"
        " so the load generator never competes with the server for its core."
        if pin["server"] != "none"
        else "No CPU pinning (taskset or a second core was not available): the load generator"
        " and the server share cores, which lowers and blurs every figure."
    )
    lines = [
        "# Benchmarks",
        "",
        "Throughput and latency of the demo users API served alone and behind `apiforge.protect`,",
        "on the same server stack and the same machine, measured side by side.",
        "",
        f"Generated {report['generated']} by `bench/run.py`"
        + (f" at commit `{report['commit']}`" if report.get("commit") else "")
        + (" (quick mode: fewer, shorter rounds)" if settings["quick"] else "")
        + ".",
        "",
        "## How it is measured",
        "",
        f"- uvicorn {versions['uvicorn']} with uvloop and httptools, one worker, on loopback"
        " (`127.0.0.1`), access log off, `server` header off; every variant, bare ones too,"
        " on the HTTP protocol APIForge's own servers use (`apiforge.serving`: head deadline,"
        " connection caps, repeated header lines written once).",
        f"- {pinning_text}",
        f"- wrk, one thread, {settings['connections']} keep-alive connections,"
        f" {settings['duration_s']:g} s per run, after a {settings['warmup_s']:g} s warm-up"
        " of every route on every server.",
        f"- {settings['rounds']} rounds; every round runs each (route, variant) pair once in a"
        " shuffled order, so drift on a shared machine hits every variant alike.",
        f"- Each round gives a ratio of the variant's req/s to `{baseline}` on the same route in"
        " the same round; the table shows the median of those ratios, and the median req/s,"
        " p50 and p99 over the rounds; the ratio range is the lowest and highest round.",
        "- Every variant is sent the same request bytes: the baselines get the demo's API key"
        " and bearer token too, and ignore them.",
        "- Every route is checked for a 2xx answer before the load starts. Runs with non-2xx"
        " answers or socket errors are flagged and left out of the medians.",
        "",
        "## Results",
        "",
    ]
    for route in ROUTES:
        route_rows = [row for row in rows if row.route.name == route.name]
        if not route_rows:
            continue
        lines += [f"### `{route.name}`", ""]
        if route.body is not None:
            lines += [f"Body: `{route.body.decode()}` (`{route.content_type}`).", ""]
        header = [
            "variant",
            "req/s",
            "p50 (ms)",
            "p99 (ms)",
            "ratio",
            "to",
            "ratio range",
        ]
        if with_goals:
            header.append("goal")
        if any(row.flagged for row in route_rows):
            header.append("notes")
        lines.append("| " + " | ".join(header) + " |")
        lines.append("| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |")
        for row in route_rows:
            cells = [
                f"`{row.variant.name}`",
                f"{row.rps:,.0f}",
                f"{row.p50_ms:.2f}",
                f"{row.p99_ms:.2f}",
                _ratio_text(row, baseline),
                f"`{row.variant.baseline or baseline}`",
                _ratio_range(row, baseline),
            ]
            if with_goals:
                cells.append(
                    ""
                    if row.goal is None
                    else f"≥ {row.goal:.2f} {'pass' if row.goal_met else 'miss'}"
                )
            if "notes" in header:
                cells.append(_notes(row))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["Variants:", ""]
    seen = []
    for row in rows:
        if row.variant.name not in seen:
            seen.append(row.variant.name)
            lines.append(f"- `{row.variant.name}`: {row.variant.description}.")
    lines += ["", *READING_NOTES]
    lines += [
        "",
        "## Machine and versions",
        "",
        f"- CPU: {machine['cpu']}, {machine['cores']} cores; memory {machine['memory']}",
        f"- Kernel: {machine['kernel']}; Python {machine['python']}",
        "- Load average at start: "
        + ", ".join(f"{x:.2f}" for x in machine["load_average_at_start"]),
        "- " + ", ".join(f"{name} {version}" for name, version in versions.items()),
        "",
        "On a shared machine absolute req/s move from one run to the next; the ratios to the",
        "baseline, measured in the same rounds, are the figures to compare across machines.",
        "",
        "## Reproduce",
        "",
        "```sh",
        "make bench                            # 5 rounds x 5 s (about "
        f"{report['estimate_default_s'] / 60:.0f} min)",
        ".venv/bin/python bench/run.py --quick  # 3 rounds x 2 s",
        ".venv/bin/python bench/run.py --goals  # also check the minimum ratios",
        "```",
        "",
        "wrk is installed with `apt-get install wrk` when it is missing and the run has root;"
        " raw figures, every round's ratio and the settings are in `bench/results.json`.",
        "",
    ]
    return "\n".join(lines)


def render_terminal(rows: list[Row], baseline: str) -> str:
    lines = []
    width = max(len(row.variant.name) for row in rows)
    for route in ROUTES:
        route_rows = [row for row in rows if row.route.name == route.name]
        if not route_rows:
            continue
        lines.append(route.name)
        for row in route_rows:
            goal = ""
            if row.goal is not None:
                goal = f"  goal ≥ {row.goal:.2f} {'pass' if row.goal_met else 'MISS'}"
            note = f"  [{_notes(row)}]" if row.flagged else ""
            lines.append(
                f"  {row.variant.name:<{width}}  {row.rps:>9,.0f} req/s"
                f"  p50 {row.p50_ms:6.2f} ms  p99 {row.p99_ms:6.2f} ms"
                f"  ratio {_ratio_text(row, baseline)}"
                + (f" [{spread}]" if (spread := _ratio_range(row, baseline)) else "")
                + f"{goal}{note}"
            )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


READING_NOTES = [
    '## Reading the figures',
    '',
    '- Per request on this machine, at the HTTP level: `starlette-min` costs about 28 µs '
    '(36k req/s), the bare demo about 90 µs (its handler is one SQLAlchemy query), and '
    'the full pipeline adds about 50 µs to either (`starlette-min-protected` ~79 µs). '
    'Measured in process (no sockets), the same full path costs about 30 µs over the app:'
    ' rate limits in memory ~5 µs (two GCRA limits, per key and per user, and the '
    'RateLimit headers), the bearer token from the verified-token cache ~4 µs, the '
    'response check of authorization ~3 µs, the API key ~3 µs, the security, CORS and '
    'RateLimit headers ~3 µs, the pipeline core ~4 µs; the rest is the response held '
    'whole for its check, and uvicorn writing 11 more response headers (~0.4 µs each).',
    '- `protected-fresh-tokens` turns the verified-token cache off: every request pays an'
    ' ES256 signature check (~50 µs) and one state-store lookup of its `jti`, as a token '
    'never seen before does. Real clients reuse a token for its 10 minutes, which is the '
    '`protected` row.',
    '- `protected-redis` decides every limit of a request in one `EVALSHA` (checks of one'
    ' event-loop tick share a pipeline); its cost over `protected` is that round trip.',
    '- `no-authz` is `protected` without the authorization layers: the difference is what'
    ' roles, CEL rules, the object check on the answer and field filtering cost.',
    "- `assembled` is what users write today from the libraries' documentation (FastAPI +"
    " pydantic, an API-key header, PyJWT ES256, slowapi, Starlette's CORS and "
    'TrustedHost, `secure`, a request-id middleware) doing the same checks on the same '
    'routes and data. Side by side, `protected` serves about 3x its throughput on reads'
    ' and 2.2x on the `PUT` (4x `assembled-redis` on reads); PyJWT alone costs about 70 '
    'µs a request and slowapi about 40 µs.',
    '- The `PUT` of `starlette-min-protected` pays for validation the minimal app does '
    'not do at all (strict model, e-mail check, HTML sanitizer), so it is not a like-for-'
    'like ratio.',
    '- The ratio range of a row is its lowest and highest round: on this shared 2-core '
    'machine a single round can move by ±0.1-0.2, which is why only medians are quoted.',
]


def estimate_seconds(n_variants: int, rounds: int, duration_s: float, warmup_s: float) -> float:
    pairs = n_variants * len(ROUTES)
    return (
        n_variants * SERVER_OVERHEAD_S
        + pairs * (warmup_s + RUN_OVERHEAD_S)
        + rounds * pairs * (duration_s + RUN_OVERHEAD_S)
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    names = [v.name for v in VARIANTS]
    parser = argparse.ArgumentParser(
        description="Load-benchmark the variants in bench/variants.py with wrk.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--variants",
        help=f"comma-separated variants to run (known: {', '.join(names)}); "
        "default: every variant marked default",
    )
    parser.add_argument("--baseline", default=BASELINE, help="variant the ratios divide by")
    parser.add_argument("--rounds", type=int, help="rounds (default 5, --quick 3)")
    # wrk takes whole seconds only.
    parser.add_argument("--duration", type=int, help="seconds per run (default 5, --quick 2)")
    parser.add_argument(
        "--warmup", type=int, help="warm-up seconds per route and server (default 2, --quick 1)"
    )
    parser.add_argument("--connections", type=int, default=32, help="wrk keep-alive connections")
    parser.add_argument("--quick", action="store_true", help="3 rounds x 2 s")
    parser.add_argument("--goals", action="store_true", help="check variants.GOALS; exit 3 on miss")
    parser.add_argument("--seed", type=int, help="seed of the run order (default: random)")
    parser.add_argument("--server-cpus", default="0", help="taskset CPU list for the servers")
    parser.add_argument("--client-cpus", default="1", help="taskset CPU list for wrk")
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="results file")
    parser.add_argument("--markdown", type=Path, default=DEFAULT_MARKDOWN, help="report page")
    parser.add_argument("--no-write", action="store_true", help="print results only")
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="measure even when a route does not answer 2xx before the load",
    )
    args = parser.parse_args(argv)

    args.rounds = args.rounds or (3 if args.quick else 5)
    args.duration = args.duration or (2 if args.quick else 5)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    if args.rounds < 1 or args.duration <= 0 or args.warmup < 0 or args.connections < 1:
        parser.error("--rounds, --duration and --connections must be positive, --warmup >= 0")
    wanted = (
        [n.strip() for n in args.variants.split(",") if n.strip()]
        if args.variants
        else [v.name for v in VARIANTS if v.default]
    )
    unknown = [n for n in [*wanted, args.baseline] if n not in names]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(names)}")
    if args.baseline not in wanted:
        # Ratios need the baseline measured in the same rounds.
        wanted.insert(0, args.baseline)
    args.variant_list = [v for v in VARIANTS if v.name in wanted]
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**32)
    return args


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C so the servers are stopped either way."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def check_put_script() -> None:
    for route in ROUTES:
        if route.script is None:
            continue
        if not route.script.is_file():
            raise SetupError(f"wrk script {route.script} is missing")
        if route.body is not None and route.body.decode() not in route.script.read_text():
            raise SetupError(f"{route.script.name} does not send the body {route.body.decode()}")


def benchmark(args: argparse.Namespace) -> int:
    variants: list[Variant] = args.variant_list
    check_put_script()
    wrk = ensure_wrk()
    pinning = choose_pinning(args)
    estimate = estimate_seconds(len(variants), args.rounds, args.duration, args.warmup)
    log(
        f"benchmark: {len(variants)} variants ({', '.join(v.name for v in variants)}) x "
        f"{len(ROUTES)} routes, {args.rounds} rounds x {args.duration:g} s, "
        f"{args.connections} connections, seed {args.seed}"
    )
    log(f"estimated time: {estimate / 60:.1f} min ({estimate:.0f} s)")
    started = time.monotonic()
    machine = machine_info()
    servers: list[Server] = []
    runs: list[Run] = []
    any_errors = False
    with tempfile.TemporaryDirectory(prefix="apiforge-bench-") as tmp:
        work_dir = Path(tmp)
        try:
            tls_files = (
                make_certificate(work_dir) if any(v.scheme == "https" for v in variants) else None
            )
            for variant in variants:
                servers.append(start_server(variant, work_dir, pinning, tls_files))
            for server in servers:
                wait_ready(server)
                log(f"server {server.variant.name}: ready at {server.url}")

            failures = [
                f"  {server.variant.name} {route.name}: {problem}"
                for server in servers
                for route in ROUTES
                if (problem := probe(server, route)) is not None
            ]
            if failures:
                message = "routes that do not answer 2xx:\n" + "\n".join(failures)
                if not args.keep_going:
                    raise SetupError(message + "\n(--keep-going measures them anyway)")
                log("warning: " + message)

            if args.warmup > 0:
                log(f"warm-up: {args.warmup:g} s per route and server")
                for server in servers:
                    for route in ROUTES:
                        run_wrk(
                            wrk,
                            server,
                            route,
                            connections=args.connections,
                            duration_s=args.warmup,
                            pinning=pinning,
                        )

            rng = random.Random(args.seed)
            pairs = [(route, server) for route in ROUTES for server in servers]
            for n in range(1, args.rounds + 1):
                order = pairs[:]
                rng.shuffle(order)
                for i, (route, server) in enumerate(order, 1):
                    result = run_wrk(
                        wrk,
                        server,
                        route,
                        connections=args.connections,
                        duration_s=args.duration,
                        pinning=pinning,
                    )
                    runs.append(Run(n, server.variant.name, route.name, result))
                    flag = "" if result.clean else f"  !! {result.problems()}"
                    any_errors = any_errors or not result.clean
                    log(
                        f"round {n}/{args.rounds}  run {i}/{len(order)}  "
                        f"{server.variant.name:<{max(len(v.name) for v in variants)}}  "
                        f"{route.name:<16}  {result.rps:>9,.0f} req/s  "
                        f"p99 {result.p99_ms:.2f} ms{flag}"
                    )
        finally:
            stop_servers(servers)

    rows = summarise(runs, variants, args.baseline, args.goals)
    elapsed = time.monotonic() - started
    report: dict[str, Any] = {
        "generated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": machine,
        "versions": package_versions(wrk),
        "settings": {
            "connections": args.connections,
            "threads": 1,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "quick": args.quick,
            "pinning": pinning.describe(),
            "baseline": args.baseline,
            "seed": args.seed,
            "goals": args.goals,
            "elapsed_s": round(elapsed, 1),
        },
        "estimate_default_s": round(
            estimate_seconds(sum(1 for v in VARIANTS if v.default), 5, 5, 2)
        ),
        "results": [row.to_json() for row in rows],
    }
    print(render_terminal(rows, args.baseline))
    if not args.no_write:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(render_markdown(report, rows, args.baseline))
        log(f"wrote {_display(args.json)} and {_display(args.markdown)}")
    log(f"done in {elapsed / 60:.1f} min")

    if any_errors:
        log("some runs had non-2xx answers or socket errors: see the flagged rows")
        return EXIT_RUN_ERRORS
    if args.goals and any(row.goal_met is False for row in rows):
        log("a goal was missed")
        return EXIT_GOAL_MISSED
    return EXIT_OK


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_DIR))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with sigterm_as_interrupt():
            return benchmark(args)
    except SetupError as exc:
        log(f"error: {exc}")
        return EXIT_SETUP
    except KeyboardInterrupt:
        log("interrupted: servers stopped")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
