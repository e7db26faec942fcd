"""The MLLP listener: an asyncio server, many connections, many messages per connection.

Per frame: tokenize (hot path, no hl7apy) → resolve the partner → one job in the group committer
that stores the raw message in the inbox, maps it, runs the core command and renders the ACK →
COMMIT → only then the ACK is written. Concurrent connections share group commits. Frames of one
connection are handled in order, one at a time (the response order is the request order).

Failure modes, all without an AA:

* the store cannot commit → AE (original) or CE (enhanced); nothing was stored, the sender resends;
* a bug in a mapping or the core → the message is kept (status ``failed``) and answered AE 207;
* a frame larger than ``max_frame`` → the connection is closed at once (nothing buffered past the
  cap); an idle connection is closed after ``idle_timeout_s``;
* an address outside every partner's ``allow_from`` (or without a certificate a partner's
  ``tls_client_names`` asks for) → the connection is closed before reading;
* shutdown has begun (``stop_accepting``) → no new connection is accepted; a frame being handled
  is committed and answered, then its connection is closed; a frame that arrives from then on is
  not answered (nor stored), so the sender resends it to the next process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from adapters.hl7v2 import ack as acks
from adapters.hl7v2.ack import AckContext, AckPolicy, Outcome, policy_for, render
from adapters.hl7v2.errors import Rejected
from adapters.hl7v2.framer import DEFAULT_MAX_FRAME, Deframer, FrameTooLarge, frame
from adapters.hl7v2.interpret import Interpreter
from adapters.hl7v2.mapping import mapping_root as resolve_mapping_root
from adapters.hl7v2.routing import ADAPTER, UNIDENTIFIED, Peer, Route, Router, certificate_names
from adapters.hl7v2.tokenizer import Message, ParseError, Transmission, parse_all
from hub import canonical
from hub.context import HubContext
from hub.db.models import InboxMessage
from hub.db.uow import Work
from hub.errors import HubError
from hub.messaging.inbox import InboxOutcome, Interpretation, receive
from hub.settings import TLSSettings

log = logging.getLogger(__name__)
READ_CHUNK = 64 * 1024
# At stop, how long frames in flight may take to commit and be answered before they are cancelled
# (a cancelled frame's job still commits, unanswered: the sender resends and gets the duplicate's ACK).
STOP_GRACE_S = 10.0


def server_ssl_context(tls: TLSSettings) -> ssl.SSLContext | None:
    """TLS for the listener; ``client_auth=required`` is mutual TLS against ``ca_file``."""
    if not tls.enabled:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    if tls.ca_file:
        context.load_verify_locations(str(tls.ca_file))
    context.verify_mode = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}[
        tls.client_auth
    ]
    return context


@dataclass
class Stats:
    connections: int = 0
    frames: int = 0
    messages: int = 0
    refused_connections: int = 0
    oversized_frames: int = 0
    unavailable: int = 0
    by_outcome: dict[str, int] = field(default_factory=dict)


class MllpListener:
    def __init__(
        self,
        ctx: HubContext,
        *,
        host: str = "127.0.0.1",
        port: int = 2575,
        tls: TLSSettings | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
        idle_timeout_s: float = 600.0,
        mapping_root: Path | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        self.ctx = ctx
        self.sock = sock  # a listening socket bound by `cgt-hub serve --workers` (host/port unused then)
        self.host = host
        self.requested_port = port
        self.tls = tls or TLSSettings()
        self.max_frame = max_frame
        self.idle_timeout_s = idle_timeout_s
        self.router = Router(
            ctx.partners, mapping_root.resolve() if mapping_root else resolve_mapping_root(ctx.settings.mappings_dir)
        )
        if not self.tls.enabled or self.tls.client_auth == "none":
            for route in self.router.routes:
                if route.client_names:
                    log.warning(
                        "MLLP partner %s accepts only client certificates named %s, but this listener "
                        "does not ask for client certificates (CGTHUB_MLLP_TLS__CLIENT_AUTH): it cannot send",
                        route.partner,
                        ", ".join(sorted(route.client_names)),
                    )
        self.stats = Stats()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._reading: set[asyncio.Task[None]] = set()  # connections waiting for their next frame
        self._stopping = False

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            return self.requested_port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self.ctx.store.start_committer()
        where: dict[str, Any] = (
            {"sock": self.sock} if self.sock is not None else {"host": self.host, "port": self.requested_port}
        )
        self._server = await asyncio.start_server(
            self._serve, ssl=server_ssl_context(self.tls), limit=READ_CHUNK, **where
        )
        log.info("MLLP listener on %s:%d (tls=%s)", self.host, self.port, self.tls.enabled)

    def stop_accepting(self) -> None:
        """Accept no new connection and no new frame; frames being handled finish (see ``stop``)."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for task in list(self._reading):
            task.cancel()

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        self.stop_accepting()
        if self._connections:
            _, late = await asyncio.wait(list(self._connections), timeout=grace_s)
            for task in late:
                task.cancel()
            if late:
                log.warning("MLLP: %d message(s) in flight after %.0f s at stop: not answered", len(late), grace_s)
                await asyncio.wait(late, timeout=2)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=5)
            self._server = None

    # ------------------------------------------------------------------ connections
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        peername = writer.get_extra_info("peername")
        address = str(peername[0]) if isinstance(peername, tuple) and peername else None
        peer = Peer(address, certificate_names(writer.get_extra_info("peercert")))
        try:
            if not self.router.admits(peer):
                self.stats.refused_connections += 1
                log.warning(
                    "MLLP connection from %s refused: no partner admits it (allow_from, tls_client_names)", address
                )
                return
            self.stats.connections += 1
            deframer = Deframer(self.max_frame)
            while not self._stopping:
                try:
                    data = await self._read(reader, task)
                except TimeoutError:
                    log.info("MLLP connection from %s idle for %.0fs; closed", address, self.idle_timeout_s)
                    return
                if not data or self._stopping:
                    return
                try:
                    payloads = deframer.feed(data)
                except FrameTooLarge as exc:
                    self.stats.oversized_frames += 1
                    log.warning("MLLP frame from %s over %d bytes; connection closed", address, exc.limit)
                    return
                for payload in payloads:
                    if self._stopping:
                        return  # not answered: the sender resends it
                    self.stats.frames += 1
                    responses = await self.handle_frame(payload, peer)
                    if responses is None:
                        return
                    if responses:
                        writer.write(b"".join(frame(r) for r in responses))
                        await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
            log.info("MLLP connection from %s ended: %s", address, type(exc).__name__)
        except asyncio.CancelledError:
            pass
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), timeout=2)

    async def _read(self, reader: asyncio.StreamReader, task: asyncio.Task[None] | None) -> bytes:
        """The next chunk; ``stop_accepting`` cancels the wait (the connection is then closed)."""
        if task is not None:
            self._reading.add(task)
        try:
            return await asyncio.wait_for(reader.read(READ_CHUNK), timeout=self.idle_timeout_s)
        finally:
            if task is not None:
                self._reading.discard(task)

    # ------------------------------------------------------------------ frames
    async def handle_frame(self, payload: bytes, peer: Peer) -> list[bytes] | None:
        """The response frames (payloads) for one received frame; None closes the connection."""
        try:
            tx = parse_all(payload)
        except ParseError as exc:
            return await self._unparsable(payload, peer, exc)
        if not tx.batch and len(tx.messages) == 1:
            response = await self.handle_message(tx.messages[0], peer)
            if response is None:
                return None
            return acks.split_acks(response)
        responses = await asyncio.gather(*(self.handle_message(m, peer) for m in tx.messages))
        if any(r is None for r in responses):
            return None
        flat = [a for r in responses for a in acks.split_acks(r or b"")]
        if tx.junk or (not tx.messages and tx.batch):
            extra = await self._batch_leftovers(payload, peer, tx)
            if extra is None:
                return None
            flat += extra
        if not tx.batch:
            return flat
        return [_batch_response(tx, flat)]

    async def handle_message(self, msg: Message, peer: Peer) -> bytes | None:
        """Store, interpret and answer one message. Returns the ACK bytes (possibly empty when the
        sender asked for none) or None to close the connection."""
        self.stats.messages += 1
        route: Route | None
        refusal: Rejected | None = None
        try:
            route = self.router.route(peer, msg)
        except Rejected as exc:
            route, refusal = None, exc
        policy = policy_for(msg, route.ack_mode if route else self.router.default_mode(peer))
        context = AckContext.of(msg)
        partner = route.partner if route else UNIDENTIFIED
        job = self._job(msg, route, refusal, policy, context)
        try:
            # shielded: a connection closed mid-job still lets the job finish (and commit) cleanly
            outcome: InboxOutcome = await asyncio.shield(self.ctx.store.run_async(job, actor=f"hl7v2:{partner}"))
        except Exception as exc:
            self.stats.unavailable += 1
            log.error("MLLP message %s from %s not stored: %s", context.control_id[:20], partner, type(exc).__name__)
            error = exc if isinstance(exc, HubError) and exc.retryable else None
            return render(context, policy, Outcome.unavailable, datetime.now(UTC), error=error)
        key = outcome.status.value + (" (duplicate)" if outcome.duplicate else "")
        self.stats.by_outcome[key] = self.stats.by_outcome.get(key, 0) + 1
        log.info(
            "MLLP %s %s from %s → inbox %s %s",
            msg.message_type[:16],
            context.control_id[:20],
            partner,
            outcome.message_id,
            key,
        )
        return outcome.response or b""

    def _job(
        self,
        msg: Message,
        route: Route | None,
        refusal: Rejected | None,
        policy: AckPolicy,
        context: AckContext,
    ) -> Callable[[Work], InboxOutcome]:
        ctx = self.ctx
        raw = msg.raw or msg.to_er7().encode("utf-8")
        external_id = context.control_id or f"sha256:{canonical.sha256_hex(raw)}"

        def job(work: Work) -> InboxOutcome:
            def interpret(w: Work, message_id: str) -> Interpretation:
                if refusal is not None or route is None:
                    raise refusal or Rejected("unknown sender", "207", "MSH-4")
                result = Interpreter(
                    w, ctx.partners, route, fin=ctx.settings.coi_fin, production=ctx.settings.env == "production"
                ).run(msg)
                response = render(context, policy, Outcome.accepted, w.now)
                return Interpretation(result.status, response, result.order_id, msg.message_type[:64] or None)

            def render_error(error: HubError | None, exc: Exception) -> bytes:
                if error is None:
                    error = HubError("internal error; the message is kept and will be replayed", hl7_code="207")
                outcome = Outcome.rejected if isinstance(error, Rejected) else Outcome.error
                return render(context, policy, outcome, work.now, error=error)

            def render_conflict(existing: InboxMessage) -> bytes:
                error = Rejected(
                    f"message control id {context.control_id[:20]} was already used for a different message "
                    f"(inbox {existing.id}); this one is kept and not processed",
                    "205",
                    "MSH-10",
                )
                return render(context, policy, Outcome.rejected, work.now, error=error)

            return receive(
                work,
                partner=route.partner if route else UNIDENTIFIED,
                channel=ADAPTER,
                external_id=external_id,
                raw=raw,
                interpret=interpret,
                render_error=render_error,
                render_conflict=render_conflict,
                message_type=msg.message_type[:64] or None,
            )

        return job

    async def _store_refusal(self, raw: bytes, peer: Peer, error: Rejected) -> bytes | None:
        """Keep bytes that are not a message (so nothing is lost) and answer AR/CR."""
        candidates = self.router.candidates(peer)
        partner = candidates[0].partner if len(candidates) == 1 else UNIDENTIFIED
        policy = policy_for(None, self.router.default_mode(peer))
        context = AckContext()

        def job(work: Work) -> InboxOutcome:
            def interpret(w: Work, message_id: str) -> Interpretation:
                raise error

            return receive(
                work,
                partner=partner,
                channel=ADAPTER,
                external_id=f"sha256:{canonical.sha256_hex(raw)}",
                raw=raw,
                interpret=interpret,
                render_error=lambda e, x: render(context, policy, Outcome.rejected, work.now, error=error),
            )

        try:
            outcome: InboxOutcome = await self.ctx.store.run_async(job, actor=f"hl7v2:{partner}")
        except Exception as exc:
            self.stats.unavailable += 1
            log.error("MLLP unparsable frame from %s not stored: %s", partner, type(exc).__name__)
            return render(context, policy, Outcome.unavailable, datetime.now(UTC))
        return outcome.response or b""

    async def _unparsable(self, payload: bytes, peer: Peer, exc: ParseError) -> list[bytes] | None:
        error = Rejected(f"not an HL7 v2 message: {exc}", "100", exc.location)
        response = await self._store_refusal(payload, peer, error)
        return None if response is None else acks.split_acks(response)

    async def _batch_leftovers(self, payload: bytes, peer: Peer, tx: Transmission) -> list[bytes] | None:
        what = f"{tx.junk} segments outside any message" if tx.junk else "an empty batch"
        error = Rejected(f"the batch holds {what}; they were kept and not processed", "100", "BHS")
        if not tx.junk:
            return []
        response = await self._store_refusal(payload, peer, error)
        return None if response is None else acks.split_acks(response)


def _batch_response(tx: Transmission, ack_messages: list[bytes]) -> bytes:
    """A batch of ACKs answering a batch: [FHS] BHS ACK… BTS [FTS]."""
    enc = tx.enc
    fs = enc.field
    now = acks.hl7_timestamp(datetime.now(UTC))
    header = tx.batch_header or tx.file_header or []

    def h(n: int) -> str:
        return header[n] if n < len(header) else ""

    codec = "utf-8" if tx.charset in ("ascii", "cp1252") else tx.charset
    lines = []
    if tx.file_header is not None:
        lines.append(fs.join(["FHS", enc.msh2, h(5), h(6), h(3), h(4), now]))
    lines.append(
        fs.join(
            [
                "BHS",
                enc.msh2,
                h(5) or acks.HUB_APPLICATION,
                h(6),
                h(3),
                h(4),
                now,
                "",
                "",
                "",
                acks.new_control_id(),
                h(11),
            ]
        )
    )
    body = b"".join(a if a.endswith(b"\r") else a + b"\r" for a in ack_messages)
    trailer = [fs.join(["BTS", str(len(ack_messages))])]
    if tx.file_header is not None:
        trailer.append(fs.join(["FTS", "1"]))
    return ("\r".join(lines) + "\r").encode(codec, errors="replace") + body + ("\r".join(trailer) + "\r").encode(codec)
