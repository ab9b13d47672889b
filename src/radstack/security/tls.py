"""TLS for HTTPS and DICOM: one server context built from the settings, used by both listeners.

DICOM over TLS follows the BCP 195 TLS Secure Transport Connection Profile (PS3.15 §B.12, after
RFC 8996 and RFC 9325): TLS 1.2 or 1.3, forward-secret key exchange (ECDHE) and AEAD ciphers only.
The older Basic TLS profile (PS3.15 §B.1: TLS 1.0 with triple DES) is not offered; RFC 8996
forbids TLS 1.0. The DICOM TLS listener is a port of its own (PS3.15 §B.1 recommends the registered
port 2762, ``dicom-tls``), never the plain DIMSE port.
"""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

from radstack.config import Settings

__all__ = ["TLS12_CIPHERS", "TLSConfigurationError", "server_ssl_context"]

#: TLS 1.2 cipher suites: ECDHE key exchange with AES-GCM or ChaCha20-Poly1305 (RFC 9325 §4.2).
#: TLS 1.3 suites are all AEAD and are OpenSSL's defaults.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"


class TLSConfigurationError(ValueError):
    """The configured certificate, key or client CA cannot be used; the server does not start."""


def _readable(path: Path, setting: str) -> Path:
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise TLSConfigurationError(
            f"{setting} {str(path)!r} cannot be read ({exc.strerror or exc}); "
            "give the path of a PEM file this process can read"
        ) from None
    return path


def _private(path: Path) -> Path:
    """``path``, once checked that others may not read or write it.

    Raises
    ------
    TLSConfigurationError
        When they may: a private key readable by every local user is no longer private.
    """
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o007:
        raise TLSConfigurationError(
            f"RADSTACK_TLS_KEY_FILE {str(path)!r} has mode {mode:04o}; others must have no access to a "
            f"private key (chmod 600 {path}, or 640 with a group of its own)"
        )
    return path


def server_ssl_context(settings: Settings, *, verify_clients: bool = False) -> ssl.SSLContext:
    """The server side TLS context for ``settings.tls_cert_file`` and ``settings.tls_key_file``.

    Parameters
    ----------
    settings
        Settings with TLS enabled (:attr:`~radstack.config.Settings.tls_enabled`).
    verify_clients
        Require a client certificate issued by ``settings.tls_client_ca_file`` when that is set
        (the DICOM listener); HTTPS never asks for one.

    Returns
    -------
    ssl.SSLContext
        TLS 1.2 and 1.3 only, ECDHE with AEAD ciphers, the certificate chain loaded.

    Raises
    ------
    TLSConfigurationError
        TLS is not configured, a file cannot be read, the key is readable by others, or the
        certificate and key are not valid PEM or do not belong together.
    """
    cert, key = settings.tls_cert_file, settings.tls_key_file
    if cert is None or key is None:
        raise TLSConfigurationError(
            "TLS is not configured: set RADSTACK_TLS_CERT_FILE and RADSTACK_TLS_KEY_FILE"
        )
    _readable(cert, "RADSTACK_TLS_CERT_FILE")
    _private(_readable(key, "RADSTACK_TLS_KEY_FILE"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    # Renegotiation is a denial-of-service lever and TLS 1.3 has none; compression leaks (CRIME).
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        # A key that needs a password gets an empty one (and fails) instead of a prompt on stdin.
        context.load_cert_chain(cert, key, password=lambda: b"")
    except ssl.SSLError as exc:
        raise TLSConfigurationError(
            f"RADSTACK_TLS_CERT_FILE {str(cert)!r} and RADSTACK_TLS_KEY_FILE {str(key)!r} are not a PEM "
            f"certificate chain and its unencrypted private key ({exc.reason or exc})"
        ) from None
    client_ca = settings.tls_client_ca_file
    if verify_clients and client_ca is not None:
        _readable(client_ca, "RADSTACK_TLS_CLIENT_CA_FILE")
        try:
            context.load_verify_locations(cafile=client_ca)
        except ssl.SSLError as exc:
            raise TLSConfigurationError(
                f"RADSTACK_TLS_CLIENT_CA_FILE {str(client_ca)!r} holds no PEM CA certificate "
                f"({exc.reason or exc})"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context
