"""An idle keep-alive connection outlives the clients' own pool expiry.

httpx, and so the openai SDK, drops a pooled connection after 5 s idle. uvicorn's default keep-alive timeout
is also 5 s, so a client could pick a connection just as the server closed it; the request then died with a
connection reset (the short soak's transport errors). `rapport serve` keeps idle connections open longer
than that; this checks it through the real CLI on a raw socket, where nothing retries.
"""

from __future__ import annotations

import select
import socket
from pathlib import Path

from bench.soak import FakeUpstreamProcess, RapportProcess, write_config

HTTPX_KEEPALIVE_EXPIRY_S = 5.0


def _get(sock: socket.socket, path: str) -> bytes:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: rapport\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, "the server closed the connection instead of answering"
        head += chunk
    header, _, body = head.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in header.split(b"\r\n") if line.lower().startswith(b"content-length"))
    while len(body) < length:
        body += sock.recv(4096)
    return header.split(b"\r\n")[0]


def test_idle_connection_stays_open_past_the_client_pool_expiry(tmp_path: Path) -> None:
    upstream = FakeUpstreamProcess()
    config = write_config(tmp_path / "data", upstream.base_url, memory={"enabled": False})
    server = RapportProcess(config, tmp_path / "server.log")
    try:
        server.start()
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            assert _get(sock, "/healthz") == b"HTTP/1.1 200 OK"
            # Watch the idle connection a little longer than a client would keep it: a close by the
            # server shows as the socket turning readable (EOF).
            readable, _, _ = select.select([sock], [], [], HTTPX_KEEPALIVE_EXPIRY_S + 1.5)
            assert not readable, "the server closed an idle connection that a client could still reuse"
            assert _get(sock, "/healthz") == b"HTTP/1.1 200 OK"
    finally:
        server.stop()
        upstream.stop()
