"""DICOM over TLS for the association server: the TLS handshake runs in the association's thread.

pynetdicom wraps an accepted socket with ``SSLContext.wrap_socket`` in the listener thread, which
performs the handshake there, blocking and without a time limit: one client that connects to the
TLS port and sends nothing would stop every other association from being accepted. Here the
listener only wraps the socket; the handshake runs, with a time limit, in the thread that then
serves the association.
"""

from __future__ import annotations

import logging
import socket
import ssl
from typing import Any

from pynetdicom.transport import ThreadedAssociationServer

__all__ = ["HANDSHAKE_SECONDS", "DeferredHandshakeServer"]

log = logging.getLogger(__name__)

#: A TLS client has this long to complete its handshake.
HANDSHAKE_SECONDS = 10.0


class DeferredHandshakeServer(ThreadedAssociationServer):
    """pynetdicom's threaded association server with the TLS handshake moved out of the listener."""

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept a connection; wrap it for TLS without shaking hands yet."""
        assert self.socket is not None
        client, address = self.socket.accept()
        if self.ssl_context is not None:
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Shake hands (TLS only), then serve the association as pynetdicom does."""
        if isinstance(request, ssl.SSLSocket) and not _handshake(request, client_address):
            self.shutdown_request(request)
            return
        super().process_request_thread(request, client_address)


def _handshake(sock: ssl.SSLSocket, address: Any) -> bool:
    """Complete the server side of the TLS handshake; False (logged) when it fails or times out.

    A client without a certificate from ``tls_client_ca_file``, when one is required, fails here.
    """
    timeout = sock.gettimeout()
    sock.settimeout(HANDSHAKE_SECONDS)
    try:
        sock.do_handshake()
    except (OSError, ValueError) as exc:
        host = address[0] if isinstance(address, tuple) else address
        log.warning("DICOM TLS handshake with %s failed: %s", host, getattr(exc, "reason", None) or exc)
        return False
    sock.settimeout(timeout)
    log.debug("DICOM TLS connection from %s: %s, %s", address, sock.version(), (sock.cipher() or ("",))[0])
    return True
