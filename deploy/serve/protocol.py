"""The HTTP connection of ``deploy serve``: uvicorn's own protocol (httptools where installed, else h11) with
the guards uvicorn leaves to the application.

- **A deadline for the request line and headers** (``--read-timeout-s``, the same as for the body). uvicorn
  times out only an idle keep-alive connection after an answer: a client that opened a connection and sent
  its headers a byte at a time held it for as long as it liked (40 s and more in the issue's test). A client
  whose headers are not complete in time is answered 408 and the connection closed; a connection that sent
  no byte at all is closed without an answer.
- **A bound on the header bytes** (``MAX_HEADER_BYTES``): the httptools parser keeps every header it is sent;
  past the bound the answer is 431 and the connection closes (h11 has its own bound, set to the same size).
- **Protocol errors as JSON**: a request that does not parse was answered in plain text by uvicorn; it is
  answered ``{"error": "bad_request", "message": ...}`` like every other error of the station.

These answers come from the connection, before the app sees a request, so they are not counted in /metrics.
uvicorn is imported inside the function (the ``serve`` extra).
"""

from __future__ import annotations

import json
from typing import Any

MAX_HEADER_BYTES = 64 * 1024
KEEP_ALIVE_S = 5  # an idle keep-alive connection is closed after this (uvicorn's timeout_keep_alive)
_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


def answer_and_close(transport: Any, status: int, kind: str, message: str) -> None:
    """Write one JSON error answer straight to the connection and close it (no request cycle to answer in)."""
    if transport.is_closing():
        return
    body = (json.dumps({"error": kind, "message": message}) + "\n").encode("utf-8")
    head = (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % (status, _REASONS[status], len(body)))
    transport.write(head + body)
    transport.close()


def station_protocol(header_timeout_s: float) -> type:
    """uvicorn's HTTP protocol class with the guards above, for ``uvicorn.Config(http=...)``."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class StationHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        _deadline: Any = None
        _header_bytes = 0
        _cycle_before: Any = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            """Wait for the next request's headers: the cycle changes when they are complete."""
            self._disarm()
            self._header_bytes, self._cycle_before = 0, self.cycle
            self._deadline = self.loop.call_later(header_timeout_s, self._headers_late)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def data_received(self, data: bytes) -> None:
            waiting = self._deadline is not None
            if waiting and not (self.cycle is not None and self.cycle.more_body):  # not the rest of an answered body
                self._header_bytes += len(data)
            super().data_received(data)
            if not waiting:
                return
            if self.cycle is not self._cycle_before:
                self._disarm()
            elif self._header_bytes > MAX_HEADER_BYTES:
                self._disarm()
                answer_and_close(self.transport, 431, "headers_too_large", f"the request line and headers are over "
                                 f"{MAX_HEADER_BYTES} bytes")

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _headers_late(self) -> None:
            self._deadline = None
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a request is being answered (pipelining): its answer arms the deadline again
            if self._header_bytes == 0:
                self.transport.close()  # opened and never used: nothing to answer
                return
            answer_and_close(self.transport, 408, "timeout", f"the request headers did not arrive within "
                             f"{header_timeout_s:g} s ({self._header_bytes} bytes received)")

        def send_400_response(self, msg: str) -> None:
            answer_and_close(self.transport, 400, "bad_request", "invalid HTTP request: the request line or a header "
                             "does not parse")

    return StationHTTPProtocol
