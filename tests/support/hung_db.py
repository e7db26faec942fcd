"""A database server that hangs: it accepts TCP connections and never says a word (a stopped
server, or a proxy in front of a partitioned one). A store on :meth:`HungDatabase.url` blocks in
every call until its connect timeout."""

from __future__ import annotations

import contextlib
import socket
import threading


class HungDatabase:
    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/hub"

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                self.accepted.append(self.sock.accept()[0])

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()  # ends the connection attempts still waiting for an answer
