"""The server TLS context over real sockets: protocol floor, ciphers, checks, live reload."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import shutil
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from uvicorn.protocols.http.h11_impl import H11Protocol

from apiforge import tls
from apiforge.errors import ConfigurationError
from apiforge.tls import context as tls_context
from apiforge.tls.certs import DevCertificates, write_dev_certificates, write_private_file
from apiforge.tls.context import (
    CertificateReloader,
    TlsSettings,
    apply_to_uvicorn,
    build_server_context,
    load_report,
    names_cover,
)

NOW = dt.datetime.now(dt.UTC)

# ---------------------------------------------------------------------------------------------
# helpers


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _scheme_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    body = scope["scheme"].encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


class TlsServer:
    """uvicorn on 127.0.0.1 with our context and a reloader, on one loop in a thread."""

    def __init__(
        self,
        settings: TlsSettings,
        *,
        on_reload: Callable[[list[str]], None] | None = None,
        on_error: Callable[[ConfigurationError], None] | None = None,
    ) -> None:
        self.port = _free_port()
        self.context = build_server_context(settings)
        config = uvicorn.Config(
            _scheme_app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            server_header=False,
        )
        apply_to_uvicorn(config, self.context)
        self.config = config
        self.server = uvicorn.Server(config)
        self.reloader = CertificateReloader(
            self.context, settings, interval=0.05, on_reload=on_reload, on_error=on_error
        )
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        async with self.reloader:
            await self.server.serve()

    def __enter__(self) -> TlsServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _client(
    ca: Path | None,
    *,
    maximum: ssl.TLSVersion | None = None,
    ciphers: str | None = None,
) -> ssl.SSLContext:
    if ca is None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context(cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if maximum is not None:
        context.maximum_version = maximum
    if ciphers is not None:
        context.set_ciphers(ciphers)
    return context


def _handshake(port: int, client: ssl.SSLContext) -> tuple[str, str, x509.Certificate]:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        client.wrap_socket(raw, server_hostname="localhost") as sock,
    ):
        der = sock.getpeercert(binary_form=True)
        version, cipher = sock.version(), sock.cipher()
        assert der is not None and version is not None and cipher is not None
        return version, cipher[0], x509.load_der_x509_certificate(der)


def _settings(dev: DevCertificates, **changes: Any) -> TlsSettings:
    return TlsSettings(certfile=dev.server_cert, keyfile=dev.server_key, **changes)


def _self_signed(
    directory: Path,
    *,
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None,
    names: tuple[str, ...] = ("localhost",),
    lifetime: dt.timedelta = dt.timedelta(days=90),
) -> TlsSettings:
    directory.mkdir(parents=True, exist_ok=True)
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(minutes=5))
        .not_valid_after(NOW + lifetime)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_private_file(
        directory / "key.pem",
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return TlsSettings(certfile=directory / "cert.pem", keyfile=directory / "key.pem")


def _leaf(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


def _wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture
def dev(tmp_path: Path) -> DevCertificates:
    return write_dev_certificates(tmp_path / "certs")


@pytest.fixture
def tls13_server(dev: DevCertificates) -> Iterator[TlsServer]:
    with TlsServer(_settings(dev)) as server:
        yield server


@pytest.fixture
def tls12_server(dev: DevCertificates) -> Iterator[TlsServer]:
    with TlsServer(_settings(dev, min_version="1.2")) as server:
        yield server


# ---------------------------------------------------------------------------------------------
# protocol versions and ciphers, over real sockets


def test_tls13_is_accepted(dev: DevCertificates, tls13_server: TlsServer) -> None:
    version, _cipher, cert = _handshake(tls13_server.port, _client(dev.ca_cert))
    assert version == "TLSv1.3"
    assert cert.serial_number == _leaf(dev.server_cert).serial_number


def test_tls12_client_is_refused_by_default(dev: DevCertificates, tls13_server: TlsServer) -> None:
    with pytest.raises(ssl.SSLError):
        _handshake(tls13_server.port, _client(dev.ca_cert, maximum=ssl.TLSVersion.TLSv1_2))


def test_tls12_client_is_accepted_when_allowed(
    dev: DevCertificates, tls12_server: TlsServer
) -> None:
    version, cipher, _cert = _handshake(
        tls12_server.port, _client(dev.ca_cert, maximum=ssl.TLSVersion.TLSv1_2)
    )
    assert version == "TLSv1.2"
    assert cipher.startswith("ECDHE-")
    assert "GCM" in cipher or "CHACHA20" in cipher
    assert _handshake(tls12_server.port, _client(dev.ca_cert))[0] == "TLSv1.3"


@pytest.mark.parametrize(
    "ciphers",
    [
        # ECDHE, but CBC: Python's own default server list would accept these.
        "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384:ECDHE-ECDSA-AES128-SHA",
        # AEAD, but no forward secrecy.
        "AES128-GCM-SHA256:AES256-GCM-SHA384",
        "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-CHACHA20-POLY1305",
    ],
)
def test_tls12_without_ecdhe_aead_is_refused(
    dev: DevCertificates, tls12_server: TlsServer, ciphers: str
) -> None:
    client = _client(dev.ca_cert, maximum=ssl.TLSVersion.TLSv1_2, ciphers=ciphers)
    with pytest.raises(ssl.SSLError):
        _handshake(tls12_server.port, client)


def test_python_default_server_would_accept_cbc(dev: DevCertificates) -> None:
    # Guards the test above: it must fail if our cipher list were Python's default.
    assert any(
        c["protocol"] == "TLSv1.2" and not c["aead"]
        for c in ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).get_ciphers()
    )


@pytest.mark.parametrize("min_version", ["1.2", "1.3"])
def test_context_options(dev: DevCertificates, min_version: str) -> None:
    context = build_server_context(_settings(dev, min_version=min_version))
    assert context.protocol == ssl.PROTOCOL_TLS_SERVER
    assert context.minimum_version == (
        ssl.TLSVersion.TLSv1_3 if min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    )
    for option in (ssl.OP_NO_COMPRESSION, ssl.OP_NO_RENEGOTIATION, ssl.OP_CIPHER_SERVER_PREFERENCE):
        assert context.options & option
    tls12 = [c for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12
    assert all(c["kea"] == "kx-ecdhe" and c["aead"] for c in tls12)


def test_scope_scheme_is_https(dev: DevCertificates, tls13_server: TlsServer) -> None:
    assert tls13_server.config.is_ssl
    with httpx.Client(verify=_client(dev.ca_cert)) as client:
        response = client.get(f"https://127.0.0.1:{tls13_server.port}/")
    assert response.status_code == 200
    assert response.text == "https"


# ---------------------------------------------------------------------------------------------
# settings


@pytest.mark.parametrize("value", ["1.1", "1.0", "1", "TLSv1.1", "ssl3", 1.1])
def test_versions_below_12_are_refused(dev: DevCertificates, value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        _settings(dev, min_version=value)
    message = str(info.value)
    assert "tls.min_version" in message
    assert repr(value) in message
    assert '"1.3"' in message and "fix" in message


@pytest.mark.parametrize("value", ["2.0", "", "latest"])
def test_unknown_versions_are_refused(dev: DevCertificates, value: str) -> None:
    with pytest.raises(ConfigurationError, match=r"tls\.min_version"):
        _settings(dev, min_version=value)


@pytest.mark.parametrize(("value", "expected"), [(1.2, "1.2"), ("TLSv1.3", "1.3"), ("1.2", "1.2")])
def test_versions_are_normalized(dev: DevCertificates, value: object, expected: str) -> None:
    assert _settings(dev, min_version=value).min_version == expected


# ---------------------------------------------------------------------------------------------
# load-time checks


def test_clean_dev_pair_has_no_warnings(dev: DevCertificates) -> None:
    assert load_report(_settings(dev, server_name="localhost")) == []


def test_mismatched_key_is_refused(dev: DevCertificates) -> None:
    settings = TlsSettings(certfile=dev.server_cert, keyfile=dev.backup_key)
    with pytest.raises(ConfigurationError) as info:
        build_server_context(settings)
    message = str(info.value)
    assert str(dev.backup_key) in message and str(dev.server_cert) in message
    assert "fix" in message


def test_names_not_covering_server_name_are_refused(dev: DevCertificates) -> None:
    with pytest.raises(ConfigurationError) as info:
        build_server_context(_settings(dev, server_name="api.example.com"))
    message = str(info.value)
    assert "api.example.com" in message and "localhost" in message
    assert str(dev.server_cert) in message


@pytest.mark.parametrize(
    ("name", "covered"),
    [
        ("api.svc.test", True),
        ("API.SVC.TEST.", True),
        ("svc.test", False),
        ("a.b.svc.test", False),
        ("exact.test", True),
        ("other.test", False),
        ("10.0.0.1", True),
        ("10.0.0.2", False),
        ("[::1]", True),
    ],
)
def test_names_cover_is_wildcard_aware(tmp_path: Path, name: str, covered: bool) -> None:
    made = write_dev_certificates(tmp_path, hosts=("*.svc.test", "exact.test", "10.0.0.1", "::1"))
    assert names_cover(_leaf(made.server_cert), name) is covered
    settings = _settings(made, server_name=name)
    if covered:
        assert load_report(settings) == []
    else:
        with pytest.raises(ConfigurationError, match=r"tls\.server_name"):
            load_report(settings)


def test_ip_name_does_not_match_dns_entry(tmp_path: Path) -> None:
    made = write_dev_certificates(tmp_path, hosts=("localhost",))
    assert not names_cover(_leaf(made.server_cert), "127.0.0.1")


def test_expiring_soon_is_a_warning(tmp_path: Path) -> None:
    made = write_dev_certificates(tmp_path, now=NOW - dt.timedelta(days=380))
    warnings = load_report(_settings(made))
    assert len(warnings) == 1
    assert "expires" in warnings[0] and str(made.server_cert) in warnings[0]
    build_server_context(_settings(made))  # still served


def test_expired_is_refused(tmp_path: Path) -> None:
    made = write_dev_certificates(tmp_path, now=NOW - dt.timedelta(days=400))
    with pytest.raises(ConfigurationError, match="expired"):
        build_server_context(_settings(made))


def test_not_yet_valid_is_refused(tmp_path: Path) -> None:
    made = write_dev_certificates(tmp_path, now=NOW + dt.timedelta(days=2))
    with pytest.raises(ConfigurationError, match="not valid before"):
        load_report(_settings(made))


def test_now_is_honoured(dev: DevCertificates) -> None:
    later = dev.not_after - dt.timedelta(days=3)
    assert any("expires" in w for w in load_report(_settings(dev), now=later))
    with pytest.raises(ConfigurationError, match="expired"):
        load_report(_settings(dev), now=dev.not_after)


def test_leaf_only_chain_is_a_warning(dev: DevCertificates, tmp_path: Path) -> None:
    leaf_only = tmp_path / "leaf.pem"
    leaf_only.write_bytes(_leaf(dev.server_cert).public_bytes(serialization.Encoding.PEM))
    warnings = load_report(TlsSettings(certfile=leaf_only, keyfile=dev.server_key))
    assert len(warnings) == 1 and "only the leaf" in warnings[0]


def test_self_signed_leaf_alone_is_fine(tmp_path: Path) -> None:
    assert load_report(_self_signed(tmp_path)) == []


def test_chain_out_of_order_is_refused(dev: DevCertificates, tmp_path: Path) -> None:
    leaf, ca = x509.load_pem_x509_certificates(dev.server_cert.read_bytes())
    other_ca = x509.load_pem_x509_certificate(
        write_dev_certificates(tmp_path / "other").ca_cert.read_bytes()
    )
    pem = serialization.Encoding.PEM
    wrong_issuer = tmp_path / "wrong.pem"
    wrong_issuer.write_bytes(leaf.public_bytes(pem) + other_ca.public_bytes(pem))
    with pytest.raises(ConfigurationError, match="not issued by certificate #2"):
        load_report(TlsSettings(certfile=wrong_issuer, keyfile=dev.server_key))
    # CA first: the key no longer matches the first certificate.
    reversed_chain = tmp_path / "reversed.pem"
    reversed_chain.write_bytes(ca.public_bytes(pem) + leaf.public_bytes(pem))
    with pytest.raises(ConfigurationError, match="first certificate"):
        load_report(TlsSettings(certfile=reversed_chain, keyfile=dev.server_key))


@pytest.mark.parametrize("which", ["certfile", "keyfile"])
def test_missing_or_garbage_files_are_refused(dev: DevCertificates, which: str) -> None:
    path = dev.server_cert if which == "certfile" else dev.server_key
    path.write_text("not pem\n")
    with pytest.raises(ConfigurationError, match=rf"tls\.{which}"):
        load_report(_settings(dev))
    path.unlink()
    with pytest.raises(ConfigurationError, match="cannot be read"):
        load_report(_settings(dev))


def test_encrypted_key_is_refused(dev: DevCertificates) -> None:
    key = serialization.load_pem_private_key(dev.server_key.read_bytes(), password=None)
    write_private_file(
        dev.server_key,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        ),
    )
    with pytest.raises(ConfigurationError, match="encrypted"):
        build_server_context(_settings(dev))


def test_weak_rsa_key_is_refused(tmp_path: Path) -> None:
    settings = _self_signed(tmp_path, key=rsa.generate_private_key(65537, 1024))  # noqa: S505 (the point of the test)
    with pytest.raises(ConfigurationError, match="1024 bits"):
        load_report(settings)


def test_readable_key_is_a_warning(dev: DevCertificates) -> None:
    os.chmod(dev.server_key, 0o644)
    warnings = load_report(_settings(dev))
    assert len(warnings) == 1 and "chmod 600" in warnings[0]


# ---------------------------------------------------------------------------------------------
# reload without restart


def _replace_pair(source: DevCertificates, target: DevCertificates) -> None:
    """Install a new pair the way a renewal tool would: key first, then the chain."""
    write_private_file(target.server_key, source.server_key.read_bytes())
    shutil.copyfile(source.ca_cert, target.ca_cert)
    temp = target.server_cert.with_suffix(".new")
    shutil.copyfile(source.server_cert, temp)
    os.replace(temp, target.server_cert)


def test_swapped_certificate_is_served_without_restart(
    dev: DevCertificates, tmp_path: Path
) -> None:
    reloaded = threading.Event()
    with TlsServer(_settings(dev), on_reload=lambda _w: reloaded.set()) as server:
        old = _handshake(server.port, _client(dev.ca_cert))[2].serial_number
        renewed = write_dev_certificates(tmp_path / "renewed")
        new = _leaf(renewed.server_cert).serial_number
        assert new != old
        _replace_pair(renewed, dev)
        assert _wait_for(lambda: _handshake(server.port, _client(None))[2].serial_number == new), (
            "the new certificate was not served"
        )
        assert reloaded.is_set()
        # Verified against the new CA, by name, as a real client does.
        assert _handshake(server.port, _client(dev.ca_cert))[2].serial_number == new
        assert server.thread.is_alive()


def test_bad_pair_on_disk_keeps_the_old_one(
    dev: DevCertificates, caplog: pytest.LogCaptureFixture
) -> None:
    errors: list[ConfigurationError] = []
    caplog.set_level(logging.ERROR, logger="apiforge.tls")
    with TlsServer(_settings(dev), on_error=errors.append) as server:
        old = _handshake(server.port, _client(dev.ca_cert))[2].serial_number
        write_private_file(dev.server_key, dev.backup_key.read_bytes())
        assert _wait_for(lambda: bool(errors)), "the bad pair was not reported"
        assert "not the key" in str(errors[0])
        for _ in range(3):
            assert _handshake(server.port, _client(dev.ca_cert))[2].serial_number == old
        assert any("reload refused" in r.getMessage() for r in caplog.records)


def test_reloader_check_reloads_a_good_pair(dev: DevCertificates, tmp_path: Path) -> None:
    settings = _settings(dev)
    context = build_server_context(settings)
    seen: list[list[str]] = []
    reloader = CertificateReloader(context, settings, on_reload=seen.append)
    assert reloader.check() is False  # nothing changed
    _replace_pair(write_dev_certificates(tmp_path / "next"), dev)
    assert reloader.check() is True
    assert seen == [[]]
    assert reloader.check() is False


def test_reloader_refuses_expired_and_recovers(dev: DevCertificates, tmp_path: Path) -> None:
    settings = _settings(dev)
    errors: list[ConfigurationError] = []
    reloader = CertificateReloader(build_server_context(settings), settings, on_error=errors.append)
    _replace_pair(write_dev_certificates(tmp_path / "old", now=NOW - dt.timedelta(days=400)), dev)
    assert reloader.check() is False
    assert "expired" in str(errors[-1])
    _replace_pair(write_dev_certificates(tmp_path / "good"), dev)
    assert reloader.check() is True


def test_reloader_refuses_a_change_of_key_family(tmp_path: Path) -> None:
    settings = _self_signed(tmp_path)
    errors: list[ConfigurationError] = []
    reloader = CertificateReloader(build_server_context(settings), settings, on_error=errors.append)
    _self_signed(tmp_path, key=rsa.generate_private_key(65537, 2048))
    assert reloader.check() is False
    assert "EC to RSA" in str(errors[-1])


def test_reloader_restores_the_old_pair_when_openssl_refuses(
    dev: DevCertificates, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(dev)
    context = build_server_context(settings)
    errors: list[ConfigurationError] = []
    reloader = CertificateReloader(context, settings, on_error=errors.append)
    old = dev.server_cert.read_bytes()
    real_load = tls_context._load_into
    loaded: list[bytes] = []

    def flaky(target: ssl.SSLContext, material: Any) -> None:
        loaded.append(material.cert_pem)
        if len(loaded) == 1:
            raise ssl.SSLError("simulated refusal")
        real_load(target, material)

    monkeypatch.setattr(tls_context, "_load_into", flaky)
    _replace_pair(write_dev_certificates(tmp_path / "next"), dev)
    assert reloader.check() is False
    assert "OpenSSL refused" in str(errors[-1])
    assert loaded[-1] == old


async def test_reloader_polls_on_the_running_loop(dev: DevCertificates, tmp_path: Path) -> None:
    settings = _settings(dev)
    reloaded = asyncio.Event()
    reloader = CertificateReloader(
        build_server_context(settings),
        settings,
        interval=0.01,
        on_reload=lambda _w: reloaded.set(),
    )
    async with reloader:
        assert reloader.running
        with pytest.raises(RuntimeError, match="already running"):
            reloader.start()
        _replace_pair(write_dev_certificates(tmp_path / "next"), dev)
        await asyncio.wait_for(reloaded.wait(), timeout=5)
    assert not reloader.running
    await reloader.stop()  # a second stop is harmless


def test_reloader_start_needs_a_running_loop(dev: DevCertificates) -> None:
    settings = _settings(dev)
    reloader = CertificateReloader(build_server_context(settings), settings)
    with pytest.raises(RuntimeError):
        reloader.start()


def test_reloader_rejects_bad_interval(dev: DevCertificates) -> None:
    settings = _settings(dev)
    with pytest.raises(ConfigurationError, match="reload_interval"):
        CertificateReloader(build_server_context(settings), settings, interval=0)


def test_callback_failure_does_not_stop_reload(dev: DevCertificates, tmp_path: Path) -> None:
    settings = _settings(dev)

    def broken(_warnings: list[str]) -> None:
        raise RuntimeError("observer bug")

    reloader = CertificateReloader(build_server_context(settings), settings, on_reload=broken)
    _replace_pair(write_dev_certificates(tmp_path / "next"), dev)
    assert reloader.check() is True


# ---------------------------------------------------------------------------------------------
# uvicorn wiring


def _memory_handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> ssl.SSLObject:
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_side = client.wrap_bio(to_client, to_server, server_hostname="localhost")
    server_side = server.wrap_bio(to_server, to_client, server_side=True)
    for _ in range(10):
        done = 0
        for side in (client_side, server_side):
            try:
                side.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
        if done == 2:
            return client_side
    raise AssertionError("handshake did not complete")


class _H11WithAlpn(H11Protocol):
    alpn_protocols: ClassVar[list[str]] = ["http/1.1"]


def test_apply_to_uvicorn_sets_context_and_alpn(dev: DevCertificates) -> None:
    context = build_server_context(_settings(dev))
    config = uvicorn.Config(_scheme_app, host="127.0.0.1", port=_free_port(), http=_H11WithAlpn)
    apply_to_uvicorn(config, context)
    assert config.is_ssl
    config.load()
    assert config.ssl is context
    client = _client(dev.ca_cert)
    client.set_alpn_protocols(["h2", "http/1.1"])
    assert _memory_handshake(context, client).selected_alpn_protocol() == "http/1.1"


def test_apply_to_uvicorn_after_load(dev: DevCertificates) -> None:
    context = build_server_context(_settings(dev))
    config = uvicorn.Config(_scheme_app, host="127.0.0.1", port=_free_port())
    config.load()
    assert config.ssl is None
    apply_to_uvicorn(config, context)
    assert config.ssl is context and config.is_ssl


def test_apply_to_uvicorn_refuses_workers(dev: DevCertificates) -> None:
    context = build_server_context(_settings(dev))
    config = uvicorn.Config("tests.app:app", host="127.0.0.1", port=_free_port(), workers=2)
    with pytest.raises(ConfigurationError, match="workers"):
        apply_to_uvicorn(config, context)


def test_public_surface() -> None:
    assert set(tls.__all__) == {
        "CertificateReloader",
        "DevCertificates",
        "TlsSettings",
        "apply_to_uvicorn",
        "build_server_context",
        "ensure_dev_certificates",
        "load_report",
        "names_cover",
        "spki_pin",
        "write_dev_certificates",
    }
    assert set(tls_context.__all__) >= {"TlsSettings", "CertificateReloader", "TLS12_CIPHERS"}
