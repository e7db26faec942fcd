"""The HL7 v2 part of ``make demo``: a simulated St Mary's EHR places the first order as an ORM^O01
over MLLP, and at the end the hub's outbound sender delivers the journey's ORU^R01 messages (status
at every stage, the final release results) to St Mary's local MLLP endpoint.

Everything real: the listener the hub runs (inbox, group commit, ACK after COMMIT), the MLLP client
the sender uses, a TCP endpoint that answers AA. St Mary's endpoint is the one its profile names
(``mllp://127.0.0.1:6661``); if that port is taken, an ephemeral one is used instead and said so.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from dataclasses import dataclass, field

from sqlalchemy import select

from adapters.hl7v2.ack import ack_code_of, hl7_timestamp
from adapters.hl7v2.client import Endpoint, MllpClient
from adapters.hl7v2.framer import Deframer, frame
from adapters.hl7v2.listener import MllpListener
from adapters.hl7v2.outbound import outbound_channel
from adapters.hl7v2.service import sender_for
from adapters.hl7v2.tokenizer import parse
from hub.context import HubContext
from hub.db.models import TherapyOrder
from hub.db.models_hl7v2 import Hl7v2Outbound
from hub.db.types import utcnow
from hub.orders.schemas import OrderView
from hub.orders.service import view

HOSPITAL = "st-marys"


def _say(text: str) -> None:
    print(text, flush=True)  # noqa: T201 - the demo talks to the person running it


def order_message(stamp: str, placer: str, mrn: str) -> bytes:
    """What St Mary's EHR sends: ORM^O01 NW, enhanced acknowledgment (commit + application ACK)."""
    now = hl7_timestamp(utcnow()).split(".")[0]
    segments = [
        f"MSH|^~\\&|EPIC|STMARYS|CGTHUB|CGTHUB|{now}||ORM^O01^ORM_O01|DEMO{stamp}|P|2.5.1|||AL|AL|USA|UNICODE UTF-8",
        f"PID|1||{mrn}^^^STMARYS&2.16.840.1.113883.3.8998.1&ISO^MR||Rivera^Ana^^^^^L||19710309|F|||"
        "12 Elm St^^Rochester^NY^14620^USA^H",
        "PV1|1|O|CTU^01^^STMARYS",
        f"ORC|NW|{placer}^STMARYS||||||||||1234567893^Okafor^Chidi^^^Dr^^^NPI",
        f"OBR|1|{placer}^STMARYS||CART19F^Autologous anti-CD19 CAR-T (fresh)^L",
        "ZCT|CART19F|LEIDEN|||POLAR|northlab-analytics",
        "NTE|1||Lymphodepletion to be planned after collection",
        "DG1|1||C83.30^Diffuse large B-cell lymphoma^I10",
    ]
    return ("\r".join(segments) + "\r").encode()


def place_over_mllp(ctx: HubContext, stamp: str, placer: str, mrn: str) -> OrderView:
    payload = order_message(stamp, placer, mrn)

    async def exchange() -> list[bytes]:
        listener = MllpListener(ctx, host="127.0.0.1", port=0)
        await listener.start()
        client = MllpClient(Endpoint("127.0.0.1", listener.port, False))
        try:
            return await client.exchange(payload, timeout_s=30, frames=2)
        finally:
            await client.close()
            await listener.stop()

    acks = asyncio.run(exchange())
    codes = [ack_code_of(a) for a in acks]
    _say(
        f"0. St Mary's EHR sent ORM^O01 {parse(payload).control_id} over MLLP; the hub stored it, placed the order, "
        f"committed, then answered {' + '.join(codes)}"
    )
    if codes != ["CA", "AA"]:
        raise SystemExit(f"the hub refused the demo order: {acks[-1].decode(errors='replace')}")
    order = ctx.store.read(
        lambda s: s.scalars(
            select(TherapyOrder).where(TherapyOrder.ordering_partner == HOSPITAL, TherapyOrder.placer_number == placer)
        ).one()
    )
    return view(order)


@dataclass
class HospitalEndpoint:
    received: list[bytes] = field(default_factory=list)
    server: asyncio.Server | None = None

    async def start(self, port: int) -> int:
        try:
            self.server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        deframer = Deframer()
        while data := await reader.read(65536):
            for payload in deframer.feed(data):
                self.received.append(payload)
                cid = parse(payload).control_id
                ack = (
                    f"MSH|^~\\&|EPIC|STMARYS|CGTHUB|CGTHUB|||ACK^R01^ACK|A{len(self.received)}|P|2.5.1\rMSA|AA|{cid}\r"
                )
                writer.write(frame(ack.encode()))
                await writer.drain()
        writer.close()


def _stage(msg: object) -> str:
    from adapters.hl7v2.tokenizer import Message

    assert isinstance(msg, Message)
    for seg in msg.segments:
        if seg[0] == "OBX" and seg[3].startswith("journey-stage"):
            return msg.text(msg.components(seg[5])[0])
    return "?"


def deliver_to_hospital(ctx: HubContext, order_id: str) -> bool:
    """Send everything owed to St Mary's; True if the order's last ORU^R01 reached the endpoint."""
    profile = ctx.partners.get(HOSPITAL)
    channel = outbound_channel(profile) if profile is not None else None
    if channel is None:
        raise SystemExit("st-marys has no outbound hl7v2-mllp channel")
    wanted = Endpoint.parse(str(channel.endpoint))
    endpoint = HospitalEndpoint()

    async def go() -> tuple[int, int]:
        port = await endpoint.start(wanted.port)
        sender = sender_for(ctx)
        if port != wanted.port:
            sender.endpoint_overrides[HOSPITAL] = f"mllp://127.0.0.1:{port}"
        try:
            return port, await sender.deliver_all(HOSPITAL, timeout_s=40)
        finally:
            await sender.close()
            await sender.release_leases()  # the next run (or a hub started next) need not wait
            await endpoint.stop()

    port, delivered = asyncio.run(go())
    note = "" if port == wanted.port else f" (port {wanted.port} was taken; used {port})"
    rows = ctx.store.read(
        lambda s: list(
            s.scalars(select(Hl7v2Outbound).where(Hl7v2Outbound.order_id == order_id).order_by(Hl7v2Outbound.id))
        )
    )
    mine = [r for r in rows if r.status == "delivered"]
    coi = ctx.store.read(lambda s: s.get(TherapyOrder, order_id))
    _say(
        f"\n7. The hub delivered {delivered} HL7 v2 message(s) to St Mary's MLLP endpoint 127.0.0.1:{port}{note}, "
        f"each acknowledged AA; {len(mine)} of them about order {coi.coi if coi else order_id}"
    )
    if not mine:
        return False
    last = next((p for p in reversed(endpoint.received) if parse(p).control_id == mine[-1].control_id), None)
    if last is None:
        return False
    msg = parse(last)
    stage = _stage(msg)
    orc = msg.segment("ORC") or []
    _say(
        f"   Last one: {msg.message_type} {msg.control_id} — journey stage '{stage}', "
        f"order status ORC-5 {orc[5] if len(orc) > 5 else '?'}"
    )
    for payload in endpoint.received:
        released = parse(payload)
        if _stage(released) == "released":
            codes = [released.text(released.components(s[3])[0]) for s in released.segments if "RELEASE" in s[3]]
            _say(f"   At QA release it carried the final release results: {', '.join(codes)}")
    results = [p for p in endpoint.received if b"RELEASE" in p]
    return stage == "administered" or bool(results)
