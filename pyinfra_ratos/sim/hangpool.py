"""Connections the Moonraker stand-in accepted and does not answer (its ``hang`` fault).

A hanging request must not cost a thread each: the request handler hands its socket over and
returns, and one thread per server holds every such connection in a selector. A held
connection is closed when the client closes it, answered (then closed) once its deadline
passes if it has one, and dropped oldest-first beyond ``limit`` held connections, so neither
threads nor sockets grow without bound. The thread is a daemon: stopping the stand-in (SIGTERM)
ends it and the kernel closes what it held. Stdlib only.
"""

from __future__ import annotations

import collections
import selectors
import socket
import threading
import time
from typing import Callable

Answer = Callable[[], bytes]


class HangPool:
    def __init__(self, limit: int = 256) -> None:
        self.limit = limit
        self.lock = threading.Lock()
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.selector.register(self.wake_r, selectors.EVENT_READ, None)
        # socket -> (deadline or None, answer); insertion order is age
        self.held: collections.OrderedDict[socket.socket, tuple[float | None, Answer]] = (
            collections.OrderedDict())
        self.thread: threading.Thread | None = None

    def __len__(self) -> int:
        with self.lock:
            return len(self.held)

    def hold(self, sock: socket.socket, delay: float | None, answer: Answer) -> None:
        """Keep ``sock`` open unanswered; after ``delay`` seconds (None: never) send ``answer()``."""
        deadline = None if delay is None else time.monotonic() + delay
        with self.lock:
            while len(self.held) >= self.limit:
                oldest = next(iter(self.held))
                self._drop(oldest)
            sock.setblocking(False)
            self.held[sock] = (deadline, answer)
            self.selector.register(sock, selectors.EVENT_READ, "client")
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="moonraker-hang", daemon=True)
                self.thread.start()
        self.wake_w.send(b"x")

    def _drop(self, sock: socket.socket) -> None:  # under the lock
        self.held.pop(sock, None)
        try:
            self.selector.unregister(sock)
        except (KeyError, ValueError):
            pass
        sock.close()

    def _next_timeout(self) -> float | None:
        with self.lock:
            deadlines = [d for d, _ in self.held.values() if d is not None]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _run(self) -> None:
        while True:
            for key, _ in self.selector.select(self._next_timeout()):
                sock = key.fileobj
                if key.data is None:
                    try:
                        self.wake_r.recv(4096)
                    except BlockingIOError:
                        pass
                    continue
                try:
                    data = sock.recv(65536)  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:  # the client gave up: nothing left to hold
                    with self.lock:
                        self._drop(sock)  # type: ignore[arg-type]
                # more requests on a hanging connection hang too: read and ignore them
            now = time.monotonic()
            with self.lock:
                due = [(s, a) for s, (d, a) in self.held.items() if d is not None and d <= now]
                for sock, _ in due:
                    self.held.pop(sock, None)
                    self.selector.unregister(sock)
            for sock, answer in due:
                self._answer(sock, answer)

    @staticmethod
    def _answer(sock: socket.socket, answer: Answer) -> None:
        try:
            payload = answer()
            sock.settimeout(10)
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except Exception:  # noqa: BLE001 - a late answer to a gone client is nobody's error
            pass
        finally:
            sock.close()
