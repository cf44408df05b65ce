"""A TCP fault proxy: one listener per directed link, forwarding to one target, with a mode.

Rules: modes are ``pass`` (forward), ``drop`` (new connections are accepted and reset at once;
open ones stall: no byte moves either way until the mode changes, as a partition that TCP
rides out), and ``delay`` (each chunk waits ``delay_ms`` before it is written, order kept).
``heal`` is ``pass``: stalled connections resume. ``reset`` aborts every open connection.
"One-way" is a pair of links in two modes (A->B dropped, B->A passing): HTTP is request and
answer, so a direction is whose connections get through. The proxies run on one asyncio loop
in a daemon thread (``FaultProxies``); every control call is thread-safe and returns only
once the mode is in force, so a caller may act on it at once.
"""

from __future__ import annotations

import asyncio
import enum
import socket
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

LOOPBACK = "127.0.0.1"
CHUNK = 64 * 1024
T = TypeVar("T")


class Mode(enum.Enum):
    PASS = "pass"
    DROP = "drop"
    DELAY = "delay"


@dataclass(eq=False)  # one per connection, kept in a set by identity
class _Conn:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        for w in (self.client, self.upstream):
            w.transport.abort()
        for t in self.tasks:
            t.cancel()


class LinkProxy:
    """One directed link: listens on ``port`` (loopback), forwards to ``target``.
    Lives on its ``FaultProxies`` loop; use the thread-safe methods from anywhere."""

    def __init__(self, owner: FaultProxies, name: str, target: tuple[str, int],
                 port: int) -> None:
        self.owner, self.name, self.target, self.port = owner, name, target, port
        self.mode = Mode.PASS
        self.delay_ms = 0
        self.accepted = 0  # connections that reached the target
        self.refused = 0  # connections reset while the link was dropped
        self._flowing: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def __repr__(self) -> str:
        extra = f" {self.delay_ms} ms" if self.mode is Mode.DELAY else ""
        return f"<link {self.name} :{self.port} -> {self.target[1]} {self.mode.value}{extra}>"

    # -- control (thread-safe) ---------------------------------------------------------
    def set(self, mode: Mode | str, delay_ms: int = 0) -> None:
        mode = Mode(mode)
        self.owner.call(self._set(mode, delay_ms))

    def drop(self) -> None:
        self.set(Mode.DROP)

    def delay(self, ms: int) -> None:
        self.set(Mode.DELAY, ms)

    def heal(self) -> None:
        self.set(Mode.PASS)

    def reset(self) -> None:
        """Abort every open connection (the mode stays)."""
        self.owner.call(self._reset())

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    # -- on the loop -------------------------------------------------------------------
    async def _set(self, mode: Mode, delay_ms: int) -> None:
        assert self._flowing is not None
        self.mode, self.delay_ms = mode, (delay_ms if mode is Mode.DELAY else 0)
        if mode is Mode.DROP:
            self._flowing.clear()
        else:
            self._flowing.set()

    async def _reset(self) -> None:
        for conn in list(self._conns):
            conn.abort()
        self._conns.clear()

    async def start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, LOOPBACK, self.port,
                                                  reuse_address=True)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._reset()
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode is Mode.DROP:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:  # the target is down: the client sees its connection reset
            writer.transport.abort()
            return
        self.accepted += 1
        conn = _Conn(writer, up_writer)
        self._conns.add(conn)
        conn.tasks = [asyncio.create_task(self._pump(reader, up_writer, conn)),
                      asyncio.create_task(self._pump(up_reader, writer, conn))]
        await asyncio.gather(*conn.tasks, return_exceptions=True)
        self._conns.discard(conn)
        for w in (writer, up_writer):
            if not w.is_closing():
                w.transport.abort()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                    conn: _Conn) -> None:
        assert self._flowing is not None
        try:
            while True:
                data = await src.read(CHUNK)
                await self._flowing.wait()  # stalls while dropped
                if self.delay_ms:
                    await asyncio.sleep(self.delay_ms / 1000)
                    await self._flowing.wait()
                if not data:
                    if dst.can_write_eof():
                        dst.write_eof()
                    return
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            conn.abort()


class FaultProxies:
    """A set of link proxies on one event loop in a daemon thread. A context manager:
    leaving it closes every listener and connection and stops the thread."""

    def __init__(self) -> None:
        self.links: dict[str, LinkProxy] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="faultproxy",
                                        daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run ``coro`` on the proxies' loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def add(self, name: str, target: tuple[str, int], port: int = 0) -> LinkProxy:
        """A new link listening on ``port`` (0: a free one) and forwarding to ``target``."""
        if not port:
            port = free_port()
        link = LinkProxy(self, name, target, port)
        self.call(link.start())
        self.links[name] = link
        return link

    def heal(self) -> None:
        for link in self.links.values():
            link.heal()

    def close(self) -> None:
        if not self._loop.is_running():
            return
        for link in self.links.values():
            self.call(link.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> FaultProxies:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])
