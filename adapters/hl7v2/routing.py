"""Which partner sent a message: the source address decides who may connect, MSH-4 decides
between partners that share an address range.

* A connection is accepted only from an address inside some partner's ``allow_from`` (inbound or
  both-ways ``hl7v2-mllp`` channels). An empty ``allow_from`` admits no address; write
  ``0.0.0.0/0`` to admit all (behind a load balancer that does not pass the client's address).
* A partner whose channel names ``tls_client_names`` is reached only over a connection whose
  verified client certificate (mutual TLS) carries one of those names as subject CN or DNS
  subjectAltName. MSH-4 is written by the sender; the certificate is not. Without such names, two
  partners that share an address range (one data centre, one interface-engine vendor) could send
  under each other's MSH-4.
* A message is routed to the partner whose range holds the address and whose
  ``identifiers.hl7_facility`` equals MSH-4 (namespace or universal id). When only one partner's
  range holds the address, MSH-4 is informational and the message is that partner's. Several
  candidates and no matching MSH-4: the message is refused (AR) and kept as ``unidentified``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

from adapters.hl7v2.errors import Rejected
from adapters.hl7v2.mapping import MappingSet, load_mapping_set
from adapters.hl7v2.tokenizer import Message
from hub.partners.loader import PartnerDirectory

ADAPTER = "hl7v2-mllp"
UNIDENTIFIED = "unidentified"
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Peer:
    """Who is at the other end of a connection: its address and, over mutual TLS, the names in
    its verified client certificate."""

    address: str | None
    names: frozenset[str] = frozenset()


def certificate_names(peercert: object) -> frozenset[str]:
    """Subject CNs and DNS subjectAltNames of a verified peer certificate (``getpeercert()``), in
    lower case. Empty without one (no TLS, or no certificate presented)."""
    if not isinstance(peercert, dict):
        return frozenset()
    names = {str(value).lower() for rdn in peercert.get("subject", ()) for key, value in rdn if key == "commonName"}
    names |= {str(value).lower() for kind, value in peercert.get("subjectAltName", ()) if kind == "DNS"}
    return frozenset(names)


@dataclass(frozen=True)
class Route:
    partner: str
    timezone: ZoneInfo
    ack_mode: str
    mapping_names: tuple[str, ...]
    facilities: frozenset[str]
    networks: tuple[IPNetwork, ...]
    mapping_root: Path
    client_names: frozenset[str] = frozenset()
    processing_ids: frozenset[str] = frozenset()  # empty: any the hub accepts

    @property
    def mappings(self) -> MappingSet:
        return load_mapping_set(self.mapping_root, self.mapping_names)

    def admits(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, names: frozenset[str]) -> bool:
        if self.client_names and not self.client_names & names:
            return False
        return any(ip.version == n.version and ip in n for n in self.networks)


def _ip(address: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class Router:
    def __init__(self, partners: PartnerDirectory, mapping_root: Path) -> None:
        routes = []
        for profile in partners.profiles.values():
            for channel in profile.channels_of(ADAPTER):
                if channel.direction not in ("inbound", "both"):
                    continue
                networks = tuple(ipaddress.ip_network(c, strict=False) for c in channel.allow_from)
                facilities = {v for k, v in profile.identifiers.items() if k == "hl7_facility"}
                routes.append(
                    Route(
                        partner=profile.id,
                        timezone=ZoneInfo(profile.timezone),
                        ack_mode=channel.ack_mode,
                        mapping_names=tuple(channel.mappings),
                        facilities=frozenset(f.upper() for f in facilities),
                        networks=networks,
                        mapping_root=mapping_root,
                        client_names=frozenset(n.lower() for n in channel.tls_client_names),
                        processing_ids=frozenset(channel.processing_ids),
                    )
                )
        self.routes: tuple[Route, ...] = tuple(routes)

    def candidates(self, peer: Peer) -> list[Route]:
        ip = _ip(peer.address)
        if ip is None:
            return []
        return [r for r in self.routes if r.admits(ip, peer.names)]

    def admits(self, peer: Peer) -> bool:
        return bool(self.candidates(peer))

    def route(self, peer: Peer, msg: Message | None) -> Route:
        candidates = self.candidates(peer)
        if not candidates:
            raise Rejected("this address may not send HL7 v2 messages to the hub", "207", "MSH-4")
        if msg is not None:
            facility = {msg.text(c).strip().upper() for c in msg.components(msg.msh(4))[:2]} - {""}
            named = [r for r in candidates if r.facilities & facility]
            if len(named) == 1:
                return named[0]
        if len(candidates) == 1:
            return candidates[0]
        raise Rejected(
            "the sending facility (MSH-4) is not one the hub knows for this address; kept, not processed",
            "207",
            "MSH-4",
        )

    def default_mode(self, peer: Peer) -> str:
        candidates = self.candidates(peer)
        modes = {r.ack_mode for r in candidates}
        return modes.pop() if len(modes) == 1 else "original"
