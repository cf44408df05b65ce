"""The TCP fault proxy (ops/faultproxy.py) against a real echo server on loopback: pass
forwards, drop resets new connections and stalls open ones, heal resumes what was stalled,
delay still delivers in order, reset aborts open connections, close leaves nothing open."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest

from ops.faultproxy import FaultProxies, LinkProxy, Mode

QUIET_S = 0.3  # how long "nothing arrives" is watched for a stalled connection


class Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def link() -> Iterator[LinkProxy]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with FaultProxies() as proxies:
            yield proxies.add("a->b", ("127.0.0.1", server.server_address[1]))
    finally:
        server.shutdown()
        server.server_close()


def connect(link: LinkProxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", link.port), timeout=10)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        if not chunk:
            break
        got += chunk
    return got


def test_pass_forwards_both_ways(link: LinkProxy) -> None:
    with connect(link) as s:
        s.sendall(b"hello")
        assert recv_exactly(s, 5) == b"hello"
    assert link.mode is Mode.PASS and link.accepted == 1


def test_drop_resets_new_connections_and_stalls_open_ones_until_heal(
        link: LinkProxy) -> None:
    with connect(link) as open_one:
        open_one.sendall(b"before")
        assert recv_exactly(open_one, 6) == b"before"
        link.drop()
        with connect(link) as new_one:  # accepted by the kernel, then reset by the proxy
            with pytest.raises((ConnectionResetError, BrokenPipeError)):
                new_one.sendall(b"x")
                if new_one.recv(1) == b"":
                    raise ConnectionResetError
        open_one.sendall(b"during")
        open_one.settimeout(QUIET_S)
        with pytest.raises(TimeoutError):
            open_one.recv(6)
        link.heal()
        open_one.settimeout(10)
        assert recv_exactly(open_one, 6) == b"during"  # the stalled bytes resume
    assert link.refused == 1


def test_delay_still_delivers_every_chunk_in_order(link: LinkProxy) -> None:
    link.delay(20)
    assert (link.mode, link.delay_ms) == (Mode.DELAY, 20)
    with connect(link) as s:
        for i in range(5):
            s.sendall(f"chunk{i};".encode())
        assert recv_exactly(s, 35) == b"".join(f"chunk{i};".encode() for i in range(5))


def test_reset_aborts_open_connections(link: LinkProxy) -> None:
    with connect(link) as s:
        s.sendall(b"ping")
        assert recv_exactly(s, 4) == b"ping"
        link.reset()
        try:
            assert s.recv(1) == b""
        except ConnectionResetError:
            pass
    assert link.open_connections == 0
