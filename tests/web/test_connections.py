"""HTTP connections of a real ``radstack serve``, driven by raw sockets: a request answered before
its body was read ends its connection, and clients that stall (request headers, request body, an
idle keep-alive connection) are cut off after the ``RADSTACK_HTTP_*_TIMEOUT`` settings, while slow
but live clients and keep-alive clients are served.

Every wait is bounded and generous; the tests assert the state of the connection, never a speed.
"""

from __future__ import annotations

import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from radstack.config import Settings
from tests.conftest import RunningServer, free_port, start_server
from tests.processes import ServerProcess
from tests.security.pki import CertificateAuthority

#: The server under test gives a stalled client this long (headers, body, idle keep-alive).
TIMEOUT_S = 1
#: How long a test waits for the server to close a connection it should close.
CLOSE_WITHIN_S = 15.0
MAX_REQUEST_BYTES = 1_000_000
STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=XbX'
#: A body larger than the client ever sends in CLOSE_WITHIN_S, so the request never completes.
ENDLESS = 512 * 1024**2


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {
        "RADSTACK_HTTP_HEADER_TIMEOUT": str(TIMEOUT_S),
        "RADSTACK_HTTP_BODY_TIMEOUT": str(TIMEOUT_S),
        "RADSTACK_HTTP_KEEPALIVE_TIMEOUT": str(TIMEOUT_S),
        "RADSTACK_MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES),
        "RADSTACK_INGEST_PROCESSES": "0",
    }
    server = ServerProcess(tmp_path_factory.mktemp("connections") / "data", env)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def connect(server: ServerProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=CLOSE_WITHIN_S)


def head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def stream_until_closed(sock: socket.socket, request_head: bytes) -> bytes:
    """Send ``request_head``, then body bytes for as long as the connection lasts (at most
    CLOSE_WITHIN_S); return what the server answered. Fails if the connection stays open."""
    sock.sendall(request_head)
    sock.settimeout(0.05)
    chunk = b"\0" * 16384
    answer = b""
    deadline = time.monotonic() + CLOSE_WITHIN_S
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            data = None
        except OSError:  # reset (ssl.SSLError is an OSError too)
            return answer
        if data == b"":
            return answer
        if data:
            answer += data
            continue
        try:
            sock.send(chunk)
        except TimeoutError:
            pass  # the server is not reading: its receive window is full
        except OSError:  # broken pipe, reset
            return answer
    pytest.fail(
        f"connection still open after {CLOSE_WITHIN_S} s of body bytes; answer so far: {answer[:300]!r}"
    )


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (at most CLOSE_WITHIN_S)."""
    sock.settimeout(CLOSE_WITHIN_S)
    answer = b""
    while True:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            pytest.fail(f"connection still open after {CLOSE_WITHIN_S} s; answer so far: {answer[:300]!r}")
        except OSError:
            return answer
        if not data:
            return answer
        answer += data


def read_response(sock: socket.socket) -> tuple[int, bytes, bytes]:
    """One Content-Length-framed response: (status, header block, body)."""
    sock.settimeout(CLOSE_WITHIN_S)
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        assert more, f"connection closed mid-response: {data!r}"
        data += more
    header_block, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in header_block.split(b"\r\n")[1:]
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        more = sock.recv(65536)
        assert more, "connection closed mid-body"
        body += more
    return int(header_block.split(b" ", 2)[1]), header_block.lower(), body


def stow_part10(path: str) -> bytes:
    payload = Path(path).read_bytes()
    return b"--XbX\r\nContent-Type: application/dicom\r\n\r\n" + payload + b"\r\n--XbX--\r\n"


# ------------------------------------------------------------------ (a) answered before the body
@pytest.mark.parametrize(
    ("status", "authorized", "content_type", "length"),
    [
        (401, False, STOW_TYPE, ENDLESS),
        (415, True, "text/plain", ENDLESS),
        (413, True, STOW_TYPE, ENDLESS),
    ],
    ids=["401-unauthenticated", "415-wrong-type", "413-too-large"],
)
def test_a_request_answered_before_its_body_ends_its_connection(
    served: ServerProcess, status: int, authorized: bool, content_type: str, length: int
) -> None:
    headers = {"Content-Type": content_type, "Content-Length": str(length)}
    if authorized:
        headers["Authorization"] = f"Bearer {served.token}"
    with connect(served) as sock:
        answer = stream_until_closed(sock, head("POST", "/dicomweb/studies", headers))
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(f"HTTP/1.1 {status} ".encode()), answer[:300]
    # The client is told, so it stops sending and opens a new connection for its next request.
    assert b"\r\nconnection: close\r\n" in rest.lower()


@pytest.mark.parametrize(("status", "authorized"), [(401, False), (413, True)])
def test_a_client_that_writes_its_whole_body_before_reading_still_gets_the_answer(
    served: ServerProcess, status: int, authorized: bool
) -> None:
    """Python's urllib reads nothing until it has sent the body: were the connection closed with the
    body unread, the kernel's reset would reach it as a broken pipe instead of the answer."""
    headers = {"Content-Type": STOW_TYPE}
    if authorized:
        headers["Authorization"] = f"Bearer {served.token}"
    request = urllib.request.Request(
        f"{served.url}/dicomweb/studies", data=b"\0" * 16 * 1024**2, headers=headers, method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=CLOSE_WITHIN_S)
    assert refused.value.code == status


# ------------------------------------------------------------------ (b) headers that never finish
@pytest.mark.parametrize("sent", [b"", b"GET /healthz HTT", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "])
def test_a_request_whose_headers_stall_is_cut_off(served: ServerProcess, sent: bytes) -> None:
    with connect(served) as sock:
        sock.sendall(sent)
        answer = read_until_closed(sock)
    # A client that began a request is told why it ends; one that sent nothing just sees the close.
    assert answer.startswith(b"HTTP/1.1 408 ") if sent else answer == b"", answer[:300]


def test_a_request_trickling_its_headers_is_cut_off(served: ServerProcess) -> None:
    """A slowloris client: one header byte at a time, always within the timeout, never finishing."""
    with connect(served) as sock:
        sock.settimeout(0.2)
        deadline = time.monotonic() + CLOSE_WITHIN_S
        request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Slow: " + b"a" * 10_000
        for byte in request:
            assert time.monotonic() < deadline, f"connection still open after {CLOSE_WITHIN_S} s"
            try:
                sock.send(bytes([byte]))
                closed = sock.recv(65536) == b""
            except TimeoutError:
                closed = False
            except OSError:
                closed = True
            if closed:
                return
            time.sleep(0.1)
        pytest.fail("the whole trickle was accepted")


# ------------------------------------------------------------------ (c) a body that stops midway
def test_a_body_that_stops_midway_is_cut_off(served: ServerProcess) -> None:
    headers = {
        "Authorization": f"Bearer {served.token}",
        "Content-Type": STOW_TYPE,
        "Content-Length": "500000",
    }
    with connect(served) as sock:
        sock.sendall(
            head("POST", "/dicomweb/studies", headers) + b"--XbX\r\nContent-Type: application/dicom\r\n\r\n"
        )
        answer = read_until_closed(sock)
    assert b" 200 " not in answer


# ------------------------------------------------------------------ (d) idle keep-alive
def test_an_idle_keep_alive_connection_is_closed(served: ServerProcess) -> None:
    with connect(served) as sock:
        sock.sendall(head("GET", "/healthz", {}))
        status, headers, _ = read_response(sock)
        assert status == 200 and b"connection: close" not in headers
        # uvicorn's own default is 5 s: a close well before that is the setting's.
        sock.settimeout(4)
        try:
            after = sock.recv(65536)
        except ConnectionResetError:
            after = b""
        assert after == b""


# ------------------------------------------------------------------ (e) live clients are served
def test_a_keep_alive_client_is_served_many_requests_on_one_connection(served: ServerProcess) -> None:
    with connect(served) as sock:
        for _ in range(50):
            sock.sendall(head("GET", "/healthz", {}))
            status, headers, _ = read_response(sock)
            assert status == 200 and b"connection: close" not in headers
        # A small body the application never reads, sent whole: the connection is kept too.
        unread = (
            head("POST", "/dicomweb/studies", {"Content-Type": STOW_TYPE, "Content-Length": "5"}) + b"hello"
        )
        sock.sendall(unread)
        assert read_response(sock)[0] == 401
        sock.sendall(head("GET", "/healthz", {}))
        assert read_response(sock)[0] == 200


def test_a_slow_but_steady_upload_is_stored(served: ServerProcess) -> None:
    """Chunks every 0.3 s, for several times the body timeout in all."""
    body = stow_part10(str(get_testdata_file("CT_small.dcm")))
    headers = {
        "Authorization": f"Bearer {served.token}",
        "Content-Type": STOW_TYPE,
        "Content-Length": str(len(body)),
        "Accept": "application/dicom+json",
    }
    with connect(served) as sock:
        sock.sendall(head("POST", "/dicomweb/studies", headers))
        step = len(body) // 12 + 1
        for offset in range(0, len(body), step):
            time.sleep(0.3)
            sock.sendall(body[offset : offset + step])
        status, _, answer = read_response(sock)
        assert status == 200, answer[:500]
        assert b"1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322" in answer  # its SOP Instance UID
        # The connection is still good for the next request.
        sock.sendall(head("GET", "/healthz", {"Authorization": f"Bearer {served.token}"}))
        assert read_response(sock)[0] == 200


# ------------------------------------------------------------------ HTTPS
@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, ssl.SSLContext]]:
    ca = CertificateAuthority(tmp_path_factory.mktemp("pki"))
    issued = ca.issue("server", server=True)
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("tls") / "data",
        http_port=free_port(),
        dicom_port=0,
        tls_cert_file=issued.cert,
        tls_key_file=issued.key,
        ingest_processes=0,
        http_header_timeout=TIMEOUT_S,
        http_body_timeout=TIMEOUT_S,
        http_keepalive_timeout=TIMEOUT_S,
    )
    client = ssl.create_default_context(cafile=str(ca.cert))
    for running in start_server(settings):
        yield running, client


def test_https_connections_are_ended_the_same_way(tls_server: tuple[RunningServer, ssl.SSLContext]) -> None:
    server, client = tls_server
    port = int(server.url.rsplit(":", 1)[1])

    def connect_tls() -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", port), timeout=CLOSE_WITHIN_S)
        return client.wrap_socket(raw, server_hostname="localhost")

    with connect_tls() as sock:
        headers = {"Content-Type": STOW_TYPE, "Content-Length": str(ENDLESS)}
        answer = stream_until_closed(sock, head("POST", "/dicomweb/studies", headers))
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:300]
    with connect_tls() as sock:
        sock.sendall(b"GET /healthz HTT")
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]
    with connect_tls() as sock:
        for _ in range(5):
            sock.sendall(head("GET", "/healthz", {}))
            assert read_response(sock)[0] == 200
