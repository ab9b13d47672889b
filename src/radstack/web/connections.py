"""HTTP/1.1 connection lifetimes: timeouts for stalled clients, and closing after an early answer.

uvicorn's httptools protocol (the one ``uvicorn[standard]`` picks) has only a keep-alive timeout,
and that timer is cancelled by any byte received. So, measured on uvicorn 0.55:

* a request answered before its body was read (401 to an anonymous STOW, 415, 413) kept its
  connection open for as long as the client went on sending the body, whose bytes were parsed and
  dropped, and forever after it, because no timer was armed again;
* a client that sent part of a request line or headers, or part of a body, and then nothing (or a
  byte now and then: slowloris) held its connection forever.

:class:`GuardedHttpProtocol` is a small subclass of uvicorn's ``HttpToolsProtocol`` that adds:

* a **header deadline** (``RADSTACK_HTTP_HEADER_TIMEOUT``): the request line and headers must be
  complete this long after the request's first byte (after connecting, for the first request).
  It is a deadline, not an idle timer, so trickling bytes does not extend it. A client that sent
  part of a request gets ``408 Request Timeout``; either way the connection is closed;
* a **body timeout** (``RADSTACK_HTTP_BODY_TIMEOUT``) between two received chunks of a request
  body, so slow but live uploads of any size complete. It does not run while the server itself is
  the one waiting: reading paused by uvicorn's flow control, or ``Expect: 100-continue`` not yet
  answered;
* an **early answer ends the connection**: while a request's body is still arriving, its response
  carries ``Connection: close``; when that response is complete the server half-closes (FIN after
  the response), discards what the client still sends for :data:`LINGER_SECONDS` and closes. The
  lingering close (as Apache and nginx do it) lets the client read the answer: closing a socket
  with unread input makes the kernel send a reset, which may destroy the answer in flight. A
  request whose body has fully arrived keeps its connection, read or not.

The idle keep-alive timeout is uvicorn's own ``timeout_keep_alive`` (``RADSTACK_HTTP_KEEPALIVE_TIMEOUT``).
HTTPS connections get the same treatment (TLS cannot half-close: the answer is followed by the
lingering period, then ``close_notify``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from radstack.config import Settings

__all__ = ["LINGER_SECONDS", "GuardedHttpProtocol", "uvicorn_connection_options"]

logger = logging.getLogger(__name__)

#: After an answer to a request whose body was not read, what the client still sends is read and
#: discarded this long before the connection is closed.
LINGER_SECONDS = 2.0


class _ResponseTransport(asyncio.Transport):
    """The connection as one request's :class:`RequestResponseCycle` sees it: when uvicorn ends the
    connection after that response, the protocol decides how (:meth:`GuardedHttpProtocol._end`)."""

    def __init__(self, transport: asyncio.Transport, close: Callable[[], None]) -> None:
        super().__init__()
        self._transport = transport
        self._close = close

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._transport.write(data)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        self._close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools HTTP/1.1 protocol with header and body timeouts and the close of a
    connection whose request was answered before its body arrived (see the module docstring).

    uvicorn builds one per connection from the class alone, so the timeouts are class attributes:
    :func:`uvicorn_connection_options` makes a subclass carrying the settings' values.
    """

    header_timeout: ClassVar[float] = 10.0
    body_timeout: ClassVar[float] = 60.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._reading_body = False
        self._draining = False
        self._keep_alive_asked = True
        self._shutting_down = False

    # ------------------------------------------------------------------ timers
    def _arm(self, seconds: float, callback: Callable[[], None]) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _headers_timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        answering = self.cycle is not None and not self.cycle.response_complete
        if self.headers is not None and not answering:  # part of a request arrived: say why it ends
            self.transport.write(
                STATUS_LINE[408] + b"content-length: 0\r\nconnection: close\r\n\r\n"  # RFC 9110 §15.5.9
            )
        logger.info("closed HTTP connection from %s: request headers not received in time", self.client)
        self.transport.close()

    def _body_timed_out(self) -> None:
        self._timer = None
        if self.flow.read_paused or (self.cycle is not None and self.cycle.waiting_for_100_continue):
            # The server is the one not reading (flow control, or 100 Continue not yet sent).
            self._arm(self.body_timeout, self._body_timed_out)
            return
        logger.info("closed HTTP connection from %s: request body stalled", self.client)
        self.transport.close()

    # ------------------------------------------------------------------ connection
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout, self._headers_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._draining:
            return  # the request was answered; what is left of its body is discarded
        if self._reading_body:
            self._arm(self.body_timeout, self._body_timed_out)
        super().data_received(data)

    def shutdown(self) -> None:
        self._shutting_down = True
        super().shutdown()

    # ------------------------------------------------------------------ parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._timer is None:  # a later request on a keep-alive connection
            self._arm(self.header_timeout, self._headers_timed_out)

    def on_headers_complete(self) -> None:
        self._disarm()
        previous = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is previous:  # a WebSocket upgrade: no request cycle
            return
        # Until its body has arrived, a response to this request ends the connection.
        self._keep_alive_asked = cycle.keep_alive
        cycle.keep_alive = False
        cycle.transport = _ResponseTransport(self.transport, lambda: self._end(cycle))
        self._reading_body = True
        self._arm(self.body_timeout, self._body_timed_out)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_body = False
        self._disarm()
        if self.cycle is not None and not self.cycle.response_started:
            self.cycle.keep_alive = self._keep_alive_asked and not self._shutting_down

    # ------------------------------------------------------------------ ending
    def _end(self, cycle: RequestResponseCycle) -> None:
        """Close the connection after ``cycle``'s response; lingering when its body is unread."""
        if not cycle.more_body or self.transport.is_closing():
            self.transport.close()
            return
        self._reading_body = False
        self._draining = True
        self.flow.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()  # the client reads the answer, then end of stream
        self._arm(LINGER_SECONDS, self.transport.close)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._draining:
            self._unset_keepalive_if_required()  # the lingering close's timer ends it


def uvicorn_connection_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` / ``uvicorn.Config``: the HTTP protocol with the
    settings' header and body timeouts, and the keep-alive timeout.

    Parameters
    ----------
    settings
        ``http_header_timeout``, ``http_body_timeout`` and ``http_keepalive_timeout``, in seconds.
    """
    protocol = type(
        "RadstackHttpProtocol",
        (GuardedHttpProtocol,),
        {"header_timeout": settings.http_header_timeout, "body_timeout": settings.http_body_timeout},
    )
    return {"http": protocol, "timeout_keep_alive": settings.http_keepalive_timeout}
