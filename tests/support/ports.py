"""Whether a listener has stopped taking connections."""

from __future__ import annotations

import socket
import time


def refuses_connections(port: int, within_s: float = 5.0) -> bool:
    """True once a connect to ``port`` is refused within ``within_s``. A reset counts as refused:
    a connect that reaches the listening socket as it closes is queued, then reset, never served
    (a clean-clone run saw ConnectionResetError here)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except (ConnectionRefusedError, ConnectionResetError):
            return True
        time.sleep(0.05)
    return False
