"""A TCP proxy in front of the fault cluster that can lose a COMMIT's answer.

When armed, the next client message ``COMMIT`` (a simple-protocol query) is passed to the server,
which commits; then the proxy cuts the connection before the answer reaches the client. The
client cannot tell whether its transaction was applied: the store's "commit in doubt" case.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time

_COMMIT = re.compile(rb"Q....COMMIT\x00", re.DOTALL)


class CommitCutter:
    """Listens on a free loopback port and forwards every connection to ``port``."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.armed = threading.Event()
        self.cuts = 0
        self._stop = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self) -> None:
        """Cut the connection that sends the next COMMIT, after the server has it."""
        self.armed.set()

    def uri(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def close(self) -> None:
        self._stop = True
        for sock in [self.listener, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            self._sockets += [client, server]
            muted = threading.Event()  # set: the server's answers are dropped, then we cut
            for args in ((client, server, muted, True), (server, client, muted, False)):
                threading.Thread(target=self._pipe, args=args, daemon=True).start()

    def _pipe(
        self, source: socket.socket, sink: socket.socket, muted: threading.Event, from_client: bool
    ) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data or (muted.is_set() and not from_client):
                    break
                if from_client and self.armed.is_set() and _COMMIT.search(data):
                    self.armed.clear()
                    self.cuts += 1
                    muted.set()  # the server commits; its answer is never passed on
                    sink.sendall(data)
                    time.sleep(0.3)
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()
