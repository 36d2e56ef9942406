"""Load benchmark: every variant in bench/variants.py against the same routes, with wrk.

    python bench/run.py              # defaults: 5 rounds x 4 s, separate and paired, 32 connections
    python bench/run.py --quick      # 3 rounds x 2 s
    python bench/run.py --goals      # also check the minimum ratios in variants.GOALS

One server process per variant, each on its own fresh data directory, pinned to one core while
wrk runs on another, so the client never steals the server's CPU. Every round runs each
(route, variant) pair once in a shuffled order: drift on a shared machine (other tenants,
thermal limits) then lands on all variants alike instead of on whichever ran last. Those
separate runs give each variant's req/s and latencies.

The ratios come from paired runs: a variant and its baseline under load at the same moment,
both servers on the same core, each driven by its own wrk. Whatever the machine does during
the run (another tenant, a slower spell) slows both alike, so it cancels in the ratio of their
requests per CPU-second; two runs apart in time only share what the machine did in common.
Each round gives one paired ratio per (route, variant); the report keeps their median.

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
# Seconds per wrk run: every round has a separate and a paired run per variant and route.
DEFAULT_DURATION_S = 4
WRK_TIMEOUT_S = 10

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
    paired: Paired | None = None
    """The paired run with the variant's baseline in this round (None for the separate run)."""


def wrk_command(
    wrk: str, server: Server, route: Route, *, connections: int, duration_s: int,
    pinning: Pinning,
) -> list[str]:
    command = [
        *pinning.prefix(pinning.client_cpus),
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{duration_s}s",
        # A slow answer is a slow answer, not a socket error: wrk's 2 s default cuts off the
        # tail of the assembled stack when it shares its core in a paired run.
        f"--timeout={WRK_TIMEOUT_S}s",
        "--latency",
    ]
    for name, value in server.headers.items():
        command += ["-H", f"{name}: {value}"]
    if route.script is not None:
        command += ["-s", str(route.script)]
    command.append(server.url + route.path)
    return command


def run_wrk(
    wrk: str,
    server: Server,
    route: Route,
    *,
    connections: int,
    duration_s: int,
    pinning: Pinning,
) -> WrkResult:
    done = subprocess.run(
        wrk_command(wrk, server, route, connections=connections, duration_s=duration_s,
                    pinning=pinning),
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


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, every thread) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # Fields 14 and 15 of proc(5), utime and stime, counted after the command name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def paired_runs_available() -> bool:
    return Path(f"/proc/{os.getpid()}/stat").exists() and hasattr(os, "sysconf")


@dataclass(frozen=True, slots=True)
class Paired:
    """One paired run: a variant and its baseline under load at once, on the same core."""

    result: WrkResult
    cpu_s: float
    baseline: WrkResult
    baseline_cpu_s: float

    @property
    def clean(self) -> bool:
        return self.result.clean and self.baseline.clean and self.cpu_s > 0 < self.baseline_cpu_s

    @property
    def ratio(self) -> float:
        """Requests per CPU-second of the variant over the baseline's: the cost ratio per
        request, whatever share of the core each got."""
        mine = self.result.requests / self.cpu_s
        theirs = self.baseline.requests / self.baseline_cpu_s
        return mine / theirs

    def to_json(self) -> dict[str, Any]:
        return {
            "rps": round(self.result.rps, 1), "cpu_s": round(self.cpu_s, 2),
            "baseline_rps": round(self.baseline.rps, 1),
            "baseline_cpu_s": round(self.baseline_cpu_s, 2),
            "ratio": round(self.ratio, 4) if self.clean else None,
        }


def run_paired(
    wrk: str,
    variant: Server,
    baseline: Server,
    route: Route,
    *,
    variant_first: bool,
    connections: int,
    duration_s: int,
    pinning: Pinning,
) -> Paired:
    """Load ``variant`` and ``baseline`` at the same time, one wrk each; ``variant_first``
    says whose wrk starts first (alternated by round, so neither always has the head start)."""
    servers = (variant, baseline) if variant_first else (baseline, variant)
    before = {server.variant.name: cpu_seconds(server.process.pid) for server in servers}
    clients = [
        subprocess.Popen(
            wrk_command(wrk, server, route, connections=connections, duration_s=duration_s,
                        pinning=pinning),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )
        for server in servers
    ]
    outputs: dict[str, str] = {}
    try:
        for server, client in zip(servers, clients, strict=True):
            try:
                out, err = client.communicate(timeout=duration_s + 30)
            except subprocess.TimeoutExpired:
                raise SetupError(f"wrk against {server.variant.name} did not finish") from None
            if client.returncode != 0:
                raise SetupError(f"wrk failed ({client.returncode}): {err.strip() or out}")
            outputs[server.variant.name] = out
    finally:
        for client in clients:
            if client.poll() is None:
                client.kill()
                client.wait()
    used = {server.variant.name: cpu_seconds(server.process.pid) - before[server.variant.name]
            for server in servers}
    for server in servers:
        server.check_alive()
    mine, theirs = variant.variant.name, baseline.variant.name
    try:
        return Paired(parse_wrk(outputs[mine]), used[mine],
                      parse_wrk(outputs[theirs]), used[theirs])
    except ValueError as exc:
        raise SetupError(str(exc)) from None


# --------------------------------------------------------------------------- summary


@dataclass(slots=True)
class Row:
    variant: Variant
    route: Route
    runs: list[WrkResult]
    separate_ratios: list[float]
    """Per round: the variant's req/s over the baseline's, from their separate runs."""
    goal: float | None
    paired: list[Paired] = field(default_factory=list)

    @property
    def ratios(self) -> list[float]:
        """The per-round ratios the report quotes: the paired ones when there are any."""
        if self.paired:
            return [run.ratio for run in self.paired if run.clean]
        return self.separate_ratios

    @property
    def method(self) -> str:
        return "paired" if self.paired else "separate"

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
        ratios = self.ratios
        return statistics.median(ratios) if ratios else None

    @property
    def separate_ratio(self) -> float | None:
        return statistics.median(self.separate_ratios) if self.separate_ratios else None

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
            "ratio_method": self.method,
            "separate_ratio_median": (round(self.separate_ratio, 4)
                                      if self.separate_ratio is not None else None),
            "separate_ratios": [round(r, 4) for r in self.separate_ratios],
            "paired_runs": [run.to_json() for run in self.paired],
            "rps_rounds": [round(r.rps, 1) for r in self.runs],
            "goal": (
                {"min_ratio": self.goal, "met": self.goal_met, "method": self.method}
                if self.goal is not None else None
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
    by_key = {(run.round, run.variant, run.route): run.result
              for run in runs if run.paired is None}
    paired: dict[tuple[str, str], list[Paired]] = {}
    for run in runs:
        if run.paired is not None:
            paired.setdefault((run.variant, run.route), []).append(run.paired)
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
                rows.append(Row(variant, route, results, ratios, goal,
                                paired.get((variant.name, route.name), [])))
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


def _separate_text(row: Row, baseline: str) -> str:
    if row.variant.name == (row.variant.baseline or baseline) or row.separate_ratio is None:
        return ""
    return f"{row.separate_ratio:.2f}"


def paired_method_lines(baseline: str, pinned: bool) -> list[str]:
    where = (" both servers on the server core, each driven by its own wrk on the client core."
             if pinned else " each driven by its own wrk (no pinning: they share every core).")
    return [
        "- The ratios come from paired runs. In every round each variant and its baseline"
        f" (`{baseline}` unless the table says otherwise) are put under the same load at the"
        " same moment," + where
        + " What the machine does meanwhile (another tenant, a slower spell)"
        " slows both alike and cancels out of the ratio of their requests per CPU-second"
        " (user and system time of each server process, every thread). Which wrk starts"
        " first alternates by round. The `ratio` column is the median over the rounds, the"
        " range its lowest and highest round.",
        "- `separate runs` is the median ratio of the separate runs' req/s in the same"
        " rounds, the method earlier pages used: it reads the same quantity, but two runs"
        " seconds apart share only what the machine did in common, so on a shared machine"
        " a round can move it by ±0.1-0.2. `bare-twin`, a second server of the same bare"
        " app, shows what each method reads when nothing differs.",
    ]


def _notes(row: Row) -> str:
    notes = []
    if row.flagged == len(row.runs):
        notes.append(f"all {len(row.runs)} runs had errors: figures are of error answers")
    elif row.flagged:
        notes.append(f"{row.flagged}/{len(row.runs)} runs had errors, left out")
    unclean = sum(1 for run in row.paired if not run.clean)
    if unclean:
        notes.append(f"{unclean}/{len(row.paired)} paired runs had errors, left out")
    return "; ".join(notes)


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
        " shuffled order, so drift on a shared machine hits every variant alike. These"
        " separate runs give the req/s, p50 and p99 columns (medians over the rounds).",
        *(paired_method_lines(baseline, pin["server"] != "none") if settings.get("paired") else [
            f"- Each round gives a ratio of the variant's req/s to `{baseline}` on the same"
            " route in the same round; the table shows the median of those ratios; the ratio"
            " range is the lowest and highest round."]),
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
        if settings.get("paired"):
            header.append("separate runs")
        if with_goals:
            header.append("goal")
        if any(_notes(row) for row in route_rows):
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
            if settings.get("paired"):
                cells.append(_separate_text(row, baseline))
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
        f"make bench                            # 5 rounds x {DEFAULT_DURATION_S} s (about "
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
            note = f"  [{notes}]" if (notes := _notes(row)) else ""
            lines.append(
                f"  {row.variant.name:<{width}}  {row.rps:>9,.0f} req/s"
                f"  p50 {row.p50_ms:6.2f} ms  p99 {row.p99_ms:6.2f} ms"
                f"  ratio {_ratio_text(row, baseline)}"
                + (f" [{spread}]" if (spread := _ratio_range(row, baseline)) else "")
                + (f" separate {separate}" if (separate := _separate_text(row, baseline))
                   and row.paired else "")
                + f"{goal}{note}"
            )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


READING_NOTES = [
    '## Reading the figures',
    '',
    '- A ratio is the variant\'s throughput over its baseline\'s at the same CPU: 0.75 means'
    ' a request costs the server 1/0.75 = 1.33 times what the bare app\'s costs. The bare'
    ' demo\'s request is mostly its own work (uvicorn, one SQLAlchemy query on SQLite),'
    ' `starlette-min` shows the same server with almost no app, and'
    ' `starlette-min-protected` the layers\' cost over that near-empty app.',
    '- `docs/instructions.md` counts the instructions per request of the same variants under'
    ' valgrind, a measure no noise moves; its ratios agree with the paired ones to within a'
    ' few hundredths.',
    '- `protected-fresh-tokens` turns the verified-token cache off: every request pays an'
    ' ES256 signature check and one state-store lookup of its `jti`, as a token never seen'
    ' before does. Real clients reuse a token for its 10 minutes, which is the `protected`'
    ' row.',
    '- `protected-redis` decides every limit of a request in one `EVALSHA` (checks of one'
    ' event-loop tick share a pipeline); its cost over `protected` is that round trip. Its'
    ' paired ratio counts the server process\'s CPU only, as for every variant: the Redis'
    ' server\'s own work runs in another process (in production, on another machine). In'
    ' the separate runs Redis takes its CPU from the same two cores, which is why they read'
    ' lower.',
    '- `no-authz` is `protected` without the authorization layers: the difference is what'
    ' roles, CEL rules, the object check on the answer and field filtering cost.',
    "- `assembled` is what users write today from the libraries' documentation (FastAPI +"
    " pydantic, an API-key header, PyJWT ES256, slowapi, Starlette's CORS and "
    'TrustedHost, `secure`, a request-id middleware) doing the same checks on the same '
    'routes and data.',
    '- The `PUT` of `starlette-min-protected` pays for validation the minimal app does '
    'not do at all (strict model, e-mail check, HTML sanitizer), so it is not a like-for-'
    'like ratio.',
    '- `bare-twin` differs from `bare` only by being another process: its distance from 1.00'
    ' (a process\'s memory layout alone moves its speed by a percent or two) is the error'
    ' of a single figure on this page.',
]


def estimate_seconds(n_variants: int, rounds: int, duration_s: float, warmup_s: float,
                     paired: int = 0) -> float:
    pairs = n_variants * len(ROUTES)
    return (
        n_variants * SERVER_OVERHEAD_S
        + pairs * (warmup_s + RUN_OVERHEAD_S)
        + rounds * (pairs + paired * len(ROUTES)) * (duration_s + RUN_OVERHEAD_S)
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
    parser.add_argument("--duration", type=int,
                        help=f"seconds per run (default {DEFAULT_DURATION_S}, --quick 2)")
    parser.add_argument(
        "--warmup", type=int, help="warm-up seconds per route and server (default 2, --quick 1)"
    )
    parser.add_argument("--connections", type=int, default=32, help="wrk keep-alive connections")
    parser.add_argument("--quick", action="store_true", help="3 rounds x 2 s")
    parser.add_argument(
        "--no-paired", dest="paired", action="store_false",
        help="skip the paired runs: ratios from the separate runs only (half the time)",
    )
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
    args.duration = args.duration or (2 if args.quick else DEFAULT_DURATION_S)
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
    # Ratios need each variant's baseline measured in the same rounds.
    for name in [args.baseline, *(v.baseline for v in VARIANTS if v.name in wanted)]:
        if name is not None and name not in wanted:
            wanted.insert(0, name)
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
    if args.paired and not paired_runs_available():
        log("paired runs need /proc (Linux): ratios come from the separate runs only")
        args.paired = False
    paired = sum(1 for v in variants if v.name != (v.baseline or args.baseline))
    estimate = estimate_seconds(len(variants), args.rounds, args.duration, args.warmup,
                                paired=paired if args.paired else 0)
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
            by_name = {server.variant.name: server for server in servers}
            width = max(len(v.name) for v in variants)
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
                        f"{server.variant.name:<{width}}  "
                        f"{route.name:<16}  {result.rps:>9,.0f} req/s  "
                        f"p99 {result.p99_ms:.2f} ms{flag}"
                    )
                if not args.paired:
                    continue
                couples = [(route, server, by_name[server.variant.baseline or args.baseline])
                           for route, server in pairs
                           if server.variant.name != (server.variant.baseline or args.baseline)]
                rng.shuffle(couples)
                for i, (route, server, base) in enumerate(couples, 1):
                    both = run_paired(
                        wrk, server, base, route, variant_first=n % 2 == 1,
                        connections=args.connections, duration_s=args.duration,
                        pinning=pinning,
                    )
                    runs.append(Run(n, server.variant.name, route.name, both.result, both))
                    problems = "; ".join(r.problems() for r in (both.result, both.baseline)
                                         if not r.clean)
                    any_errors = any_errors or bool(problems)
                    log(
                        f"round {n}/{args.rounds}  paired {i}/{len(couples)}  "
                        f"{server.variant.name:<{width}}  {route.name:<16}  "
                        + (f"ratio {both.ratio:.3f} (cpu {both.cpu_s:.1f} s"
                           f" / {both.baseline_cpu_s:.1f} s)" if both.clean else "")
                        + (f"  !! {problems}" if problems else "")
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
            "paired": args.paired,
            "elapsed_s": round(elapsed, 1),
        },
        "estimate_default_s": round(
            estimate_seconds(
                sum(1 for v in VARIANTS if v.default), 5, DEFAULT_DURATION_S, 2,
                paired=sum(1 for v in VARIANTS if v.default and v.name != (v.baseline or BASELINE)),
            )
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
