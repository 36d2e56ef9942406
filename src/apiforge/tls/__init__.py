"""HTTPS for the server: a checked TLS context, reload without restart, dev certificates.

``build_server_context`` makes the ``ssl.SSLContext`` (TLS 1.3 by default, TLS 1.2 with ECDHE
and AEAD ciphers when allowed), ``apply_to_uvicorn`` makes uvicorn listen with it and
``CertificateReloader`` swaps in renewed certificates while the server runs.
``write_dev_certificates`` makes a local CA, a server chain and the SPKI pins for development.
"""

from apiforge.tls.certs import (
    DevCertificates,
    ensure_dev_certificates,
    spki_pin,
    write_dev_certificates,
)
from apiforge.tls.context import (
    CertificateReloader,
    TlsSettings,
    apply_to_uvicorn,
    build_server_context,
    load_report,
    names_cover,
)

__all__ = [
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
]
