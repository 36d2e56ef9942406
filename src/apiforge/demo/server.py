"""``apiforge demo``: the users API behind every layer, over HTTPS, on embedded storage."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from apiforge.core.pipeline import event_bus
from apiforge.demo import load_demo_policy, protected_demo_app
from apiforge.demo.bootstrap import CREDENTIALS_FILE
from apiforge.events import make_event
from apiforge.layers.plain_http import PlainHttpApp
from apiforge.server import Listener, serve
from apiforge.serving import ConnectionLimits
from apiforge.tls import TlsSettings, ensure_dev_certificates, load_report

__all__ = ["run_demo"]


def run_demo(
    *, host: str, port: int, http_port: int, data_dir: Path, policy_path: Path | None
) -> None:
    """Start the demo and serve until interrupted.

    Raises:
        ConfigurationError: the policy, the certificate or the ports are unusable.
    """
    policy = load_demo_policy(policy_path)
    data_dir.mkdir(parents=True, exist_ok=True)
    events = event_bus(policy.events)
    tls_policy = policy.tls
    if tls_policy.certfile and tls_policy.keyfile:
        certfile, keyfile, ca = Path(tls_policy.certfile), Path(tls_policy.keyfile), None
    else:
        names = dict.fromkeys((tls_policy.canonical_host, "localhost", "127.0.0.1", "::1", host))
        made = ensure_dev_certificates(data_dir / "tls", tuple(names))
        certfile, keyfile, ca = made.server_cert, made.server_key, made.ca_cert
    tls = TlsSettings(certfile=certfile, keyfile=keyfile, min_version=tls_policy.min_version,
                      server_name=tls_policy.canonical_host)
    for warning in load_report(tls):
        events.emit(make_event("apiforge_tls_certificate", level="WARN", outcome="warn",
                               reason=warning))

    app = protected_demo_app(data_dir, policy, events)
    app.owns_events = True
    redirect = PlainHttpApp(tls_policy.canonical_host, port, events,
                            type_base=policy.problem_type_base)
    limits = ConnectionLimits(
        header_timeout=policy.server.header_timeout,
        max_connections_per_client=policy.server.max_connections_per_client,
        max_connections=policy.server.max_connections,
    )

    def tls_changed(message: str) -> None:
        events.emit(make_event("apiforge_tls_certificate", level="INFO", outcome="reload",
                               reason=message))

    credentials = json.loads((data_dir / CREDENTIALS_FILE).read_text(encoding="utf-8"))

    def ready(url: str) -> None:
        _say(f"apiforge demo ready on {url}\n")  # the line scripts wait for
        ca_option = f"--cacert {ca} " if ca else ""
        curl = (f'curl -s {ca_option}-H "X-API-Key: $APIFORGE_DEMO_KEY"'
                ' -H "Authorization: Bearer $TOKEN"')
        body = '{"email": "alice@example.com", "age": 34, "bio": "<b>Hi</b> there"}'
        alice = credentials["accounts"]["alice"]["password"]
        grant = (f"curl -s {ca_option}{url}/v1/auth/token -d grant_type=password"
                 f" -d username=alice -d password={alice}")
        _say(
            f"\n  plain HTTP on http://{host}:{http_port} redirects here"
            + (f"\n  development CA: {ca}" if ca else "")
            + f"\n  credentials (API key, passwords, ada's TOTP secret): "
            f"{data_dir / CREDENTIALS_FILE}\n"
            f"\n  export APIFORGE_DEMO_KEY={credentials['api_key']}"
            f"\n  export TOKEN=$({grant} | python3 -c 'import json,sys;"
            " print(json.load(sys.stdin)[\"access_token\"])')"
            f"\n  {curl} {url}/v1/users/me"
            f"\n  {curl} -X PUT {url}/v1/users/me -H 'Content-Type: application/json'"
            f" -d '{body}'"
            f"\n  {curl} {url}/v1/users"
            f"\n  {curl} {url}/v1/users/2                # bob's profile: 404 for alice"
            f"\n  curl -s {ca_option}{url}/openapi.json"
            f"\n  curl -si {ca_option}{url}/v1/users/me                  # no credentials: 401"
            f"\n  {curl} -i --path-as-is {url}/v1/users/me/../2   # refused: 400"
            f"\n  curl -si http://{host}:{http_port}/v1/users/me          # 301 to HTTPS"
            "\n\n  Security events are printed below as JSON lines. Ctrl-C stops.\n\n"
        )

    serve(app, host=host, port=port, limits=limits, tls=tls,
          extra=Listener(redirect, http_port), on_ready=ready, on_tls_change=tls_changed)
    sys.stdout.flush()


def _say(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
