"""A persistent MLLP client: one connection, reused for every message, reconnected on failure.

``send`` writes one framed message and waits for the acknowledgment whose MSA-2 names it (frames
that acknowledge something else — a late ACK after a timeout — are skipped). Timeouts and broken
connections raise :class:`DeliveryError`; the caller decides about retrying.

Receivers end idle connections (their idle timeout, a restart, "one message per connection"
engines that close after each ACK). A kept connection the peer has closed is not an attempt that
failed: ``send`` notices the peer's close before writing, or — when the close was not yet seen —
when the kept connection ends before anything answers the message, and then sends once more over
a new connection (the same bytes, the same MSH-10, so a receiver that did get the first copy sees a
duplicate).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from dataclasses import dataclass

from adapters.hl7v2.ack import acked_control_id
from adapters.hl7v2.framer import Deframer, FrameTooLarge, frame

ENDPOINT = re.compile(r"^mllp(\+tls)?://(\[[^\]]+\]|[^:/\s]+):(\d+)$")


class _StaleConnection(Exception):
    """A kept connection ended before anything answered the message."""


class DeliveryError(Exception):
    def __init__(self, outcome: str, detail: str) -> None:
        super().__init__(f"{outcome}: {detail}")
        self.outcome = outcome  # timeout | connect-error | io-error
        self.detail = detail


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        m = ENDPOINT.match(url.strip())
        if not m:
            raise ValueError(f"not an MLLP endpoint (mllp://host:port or mllp+tls://host:port): {url!r}")
        return cls(m.group(2).strip("[]"), int(m.group(3)), bool(m.group(1)))

    def __str__(self) -> str:
        return f"mllp{'+tls' if self.tls else ''}://{self.host}:{self.port}"


class MllpClient:
    def __init__(
        self,
        endpoint: Endpoint,
        *,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout_s: float = 10.0,
        max_frame: int = 1024 * 1024,
    ) -> None:
        self.endpoint = endpoint
        self.ssl_context = (
            ssl_context if ssl_context is not None else (ssl.create_default_context() if endpoint.tls else None)
        )
        self.connect_timeout_s = connect_timeout_s
        self.max_frame = max_frame
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._deframer = Deframer(max_frame)
        self._pending: list[bytes] = []
        self._answered = False  # a frame came back since the message was written
        self._others: list[str] = []  # MSA-2 of the frames that acknowledged something else
        self._dropped_before = 0

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    def _peer_closed(self) -> bool:
        """The peer has ended the kept connection (its close is already read by the transport)."""
        return self._reader is not None and self._reader.at_eof()

    async def connect(self) -> None:
        if self.connected and not self._peer_closed():
            return
        if self._writer is not None:
            await self.close()
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(self.endpoint.host, self.endpoint.port, ssl=self.ssl_context),
                timeout=self.connect_timeout_s,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise DeliveryError("connect-error", type(exc).__name__) from exc
        self._deframer = Deframer(self.max_frame)
        self._pending = []

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), timeout=2)

    async def send(self, payload: bytes, control_id: str, *, timeout_s: float) -> bytes:
        """Send one message; return the ACK that acknowledges ``control_id``."""
        if self.connected and not self._peer_closed():
            with contextlib.suppress(_StaleConnection):
                return await self._send_once(payload, control_id, timeout_s, stale_ok=True)
        return await self._send_once(payload, control_id, timeout_s, stale_ok=False)  # a new connection

    async def _send_once(self, payload: bytes, control_id: str, timeout_s: float, *, stale_ok: bool) -> bytes:
        await self.connect()
        assert self._writer is not None
        assert self._reader is not None
        self._answered = False
        self._others = []
        self._dropped_before = self._deframer.dropped
        try:
            self._writer.write(frame(payload))
            await asyncio.wait_for(self._writer.drain(), timeout=timeout_s)
            return await asyncio.wait_for(self._read_ack(control_id), timeout=timeout_s)
        except TimeoutError as exc:
            seen = self._seen()
            await self.close()
            raise DeliveryError("timeout", f"no acknowledgment of {control_id} within {timeout_s:g}s{seen}") from exc
        except (OSError, ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, FrameTooLarge) as exc:
            await self.close()
            if stale_ok and not self._answered and isinstance(exc, (ConnectionError, asyncio.IncompleteReadError)):
                raise _StaleConnection(type(exc).__name__) from exc
            raise DeliveryError("io-error", type(exc).__name__) from exc

    async def exchange(self, payload: bytes, *, timeout_s: float, frames: int = 1) -> list[bytes]:
        """Send one frame and return the next ``frames`` frames received (whatever they are)."""
        await self.connect()
        assert self._writer is not None
        try:
            self._writer.write(frame(payload))
            await asyncio.wait_for(self._writer.drain(), timeout=timeout_s)
            out = []
            for _ in range(frames):
                out.append(await asyncio.wait_for(self._next_frame(), timeout=timeout_s))
            return out
        except TimeoutError as exc:
            await self.close()
            raise DeliveryError("timeout", f"no answer within {timeout_s:.0f}s") from exc
        except (OSError, ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, FrameTooLarge) as exc:
            await self.close()
            raise DeliveryError("io-error", type(exc).__name__) from exc

    async def _next_frame(self) -> bytes:
        assert self._reader is not None
        while not self._pending:
            data = await self._reader.read(65536)
            if not data:
                raise ConnectionError("connection closed by the peer")
            self._pending += self._deframer.feed(data)
        return self._pending.pop(0)

    async def _read_ack(self, control_id: str) -> bytes:
        while True:
            ack = await self._next_frame()
            self._answered = True
            named = acked_control_id(ack)
            if named == control_id:
                return ack
            self._others.append(named)

    def _seen(self) -> str:
        """What came back instead of the acknowledgment (for the attempt's record: control ids and
        counts, never content), so an operator sees a receiver that answers, but not to this."""
        out = ""
        if self._others:
            names = ", ".join(repr(n[:20]) for n in self._others[:3]) + (", …" if len(self._others) > 3 else "")
            out += f"; {len(self._others)} frame(s) came back acknowledging other messages (MSA-2 {names})"
        dropped = self._deframer.dropped - self._dropped_before
        if dropped:
            out += f"; {dropped} byte(s) came back outside MLLP frames"
        return out
