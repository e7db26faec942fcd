"""Customs over SOAP: the ICS2 contracts load offline; lodging and status against a real local SOAP
service; faults, malformed and hostile XML become clear errors and alerts, never a crash."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from zeep import Client

from adapters.customs.client import Ics2CustomsClient, zeep_settings
from adapters.customs.sandbox import CustomsSandbox
from adapters.local_server import LocalServer
from adapters.registry import SoapCustoms
from hub.context import HubContext
from hub.db.models_logistics import CustomsDeclaration, OutboundWork
from hub.logistics.policy import Policy
from hub.logistics.ports import CustomsStatus, CustomsSubmission, PartnerCallError
from hub.logistics.repository import LogisticsRepository
from hub.logistics.worker import OutboundDispatcher
from hub.logs import configure
from hub.runtime import logistics_ports
from tests.conftest import CORPORA, REPO
from tests.logistics_support import alert_kinds, context, order_at, register

CORPUS_WSDL_DIR = CORPORA / "soap/eu-ics2-hmrc-import-control-wsdls/public/eu/outbound/CR-for-NES-Services-V2"
WSDL_DIR = REPO / "adapters" / "customs" / "wsdl" / "CR-for-NES-Services-V2"  # the packaged copy
CHANNEL = SoapCustoms(
    adapter="soap-customs",
    direction="both",
    wsdl="BusinessActivityService/ICS/ENSLifecycleManagementBAS/V2/CCN2.Service.Customs.EU.ICS.ENSLifecycleManagementBAS_2.0.0_CCN2_2.0.0.wsdl",
    status_wsdl="DataService/ICS/ENSConsultationDS/V2/CCN2.Service.Customs.EU.ICS.ENSConsultationDS_2.0.0_CCN2_2.0.0.wsdl",
    retries=1,
    timeout_s=2,
)


@pytest.mark.parametrize("directory", [CORPUS_WSDL_DIR, WSDL_DIR], ids=["corpus", "packaged"])
def test_every_ics2_wsdl_loads_offline_with_safe_settings(directory: Path) -> None:
    wsdls = sorted(directory.rglob("*.wsdl"))
    assert len(wsdls) == 24
    for path in wsdls:
        Client(str(path), settings=zeep_settings())  # forbid_external: no network fetch is possible


@pytest.fixture(scope="module")
def sandbox() -> Iterator[tuple[CustomsSandbox, str]]:
    service = CustomsSandbox()
    with LocalServer(service.app()) as server:
        yield service, server.url


def _client(url: str) -> Ics2CustomsClient:
    return Ics2CustomsClient(
        CHANNEL,
        wsdl_dir=WSDL_DIR,
        mappings_dir=REPO / "mappings",
        endpoint=url + "/ENSLifecycleManagementBAS",
        status_endpoint=url + "/ENSConsultationDS",
        retry_backoff_s=0.01,
    )


def test_lodge_and_follow_a_declaration(sandbox: tuple[CustomsSandbox, str]) -> None:
    service, url = sandbox
    service.mode = "normal"
    client = _client(url)
    client.submit(CustomsSubmission("CGTTEST0001", "NL987654321000", "NL000396", datetime.now(UTC), None))
    assert service.requests[-1] == "IE4N10submitPresentationInformationReqMsg"
    first = client.status("CGTTEST0001", None)
    assert first.status == "accepted"
    assert first.mrn is not None
    assert len(first.mrn) == 18
    assert client.status("CGTTEST0001", first.mrn).status == "released"


def test_debug_logging_prints_neither_the_ws_security_password_nor_the_envelopes(
    sandbox: tuple[CustomsSandbox, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With CGTHUB_LOG_LEVEL=DEBUG zeep printed every envelope as sent: the UsernameToken's password
    in clear, and the declaration's body."""
    service, url = sandbox
    service.mode = "normal"
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    monkeypatch.setattr(logging.getLogger("zeep"), "level", logging.getLogger("zeep").level)
    configure("DEBUG")
    monkeypatch.setenv("CGTHUB_TEST_ICS2_CREDENTIAL", "trader-user:Sup3r-S3cret-Passw0rd")
    client = Ics2CustomsClient(
        CHANNEL.model_copy(update={"credential": "ics2"}),
        wsdl_dir=WSDL_DIR,
        mappings_dir=REPO / "mappings",
        secrets={"ics2": "env:CGTHUB_TEST_ICS2_CREDENTIAL"},
        endpoint=url + "/ENSLifecycleManagementBAS",
        status_endpoint=url + "/ENSConsultationDS",
        retry_backoff_s=0.01,
    )
    client.submit(CustomsSubmission("CGTTEST0002", "NL987654321000", "NL000396", datetime.now(UTC), None))
    logged = capsys.readouterr().err
    assert "Sup3r-S3cret-Passw0rd" not in logged
    assert "NL987654321000" not in logged  # the declaration's body
    assert logging.getLogger("hub.logistics").isEnabledFor(logging.DEBUG)  # the hub's own debug lines stay


@pytest.mark.parametrize(
    ("mode", "code", "retryable"),
    [
        ("fault", "env:Receiver", True),
        ("malformed", "malformed", True),
        ("billion-laughs", "hostile-xml", False),
        ("xxe", "hostile-xml", False),
        ("http-500", "malformed", True),
    ],
)
def test_bad_answers_become_clear_errors(
    sandbox: tuple[CustomsSandbox, str], mode: str, code: str, retryable: bool
) -> None:
    service, url = sandbox
    client = _client(url)
    service.mode = "normal"
    client.submit(CustomsSubmission("CGTTEST0002", "NL987654321000", "NL000396", datetime.now(UTC), None))
    service.mode = mode
    try:
        with pytest.raises(PartnerCallError) as caught:
            client.status("CGTTEST0002", None)
    finally:
        service.mode = "normal"
    assert caught.value.code == code
    assert caught.value.retryable is retryable


def test_unknown_declaration_is_a_sender_fault(sandbox: tuple[CustomsSandbox, str]) -> None:
    service, url = sandbox
    service.mode = "normal"
    with pytest.raises(PartnerCallError) as caught:
        _client(url).status("CGTNOSUCHTHING", None)
    assert caught.value.code == "env:Sender"
    assert not caught.value.retryable


def test_timeout_is_retryable(sandbox: tuple[CustomsSandbox, str]) -> None:
    service, url = sandbox
    service.mode, service.delay_s = "slow", 3.0
    client = _client(url)
    started = time.monotonic()
    try:
        with pytest.raises(PartnerCallError) as caught:
            client.status("CGTTEST0001", None)
    finally:
        service.mode, service.delay_s = "normal", 0.0
    assert caught.value.retryable
    assert caught.value.code == "transport"
    assert time.monotonic() - started < client.max_call_s  # what the dispatcher waits for


@pytest.mark.slow
def test_a_slow_lodging_is_waited_for_and_never_sent_twice(ctx: HubContext) -> None:
    service = CustomsSandbox(mode="slow", delay_s=0.5)  # within the client's timeout, beyond the dispatcher's
    driver = order_at(ctx.store, ctx.partners, "collected")
    shipment = register(ctx.store, ctx.partners, driver.order.id)
    with LocalServer(service.app()) as server:
        ports = logistics_ports(ctx, {"eu-customs-ics2": server.url})
        dispatcher = OutboundDispatcher(ctx.store, ctx.partners, ports, Policy(), call_timeout_s=0.1)
        for _ in range(2):
            _due_now(ctx)
            asyncio.run(dispatcher.run_once())
        time.sleep(1)  # a submission cut off by the dispatcher would still reach the service
    decl = ctx.store.read(lambda s: LogisticsRepository.from_session(s).declaration_for(shipment.id))
    assert decl is not None
    assert decl.status in ("submitted", "accepted")
    assert service.requests.count("IE4N10submitPresentationInformationReqMsg") == 1


@pytest.fixture
def ctx(db_url: str) -> Iterator[HubContext]:
    c = context(db_url, wsdl_dir=WSDL_DIR)
    try:
        yield c
    finally:
        c.store.dispose()


@pytest.mark.slow
def test_international_leg_is_declared_and_cleared_through_the_dispatcher(ctx: HubContext) -> None:
    service = CustomsSandbox(script=("A1", "C1", "R2"))
    driver = order_at(ctx.store, ctx.partners, "collected")
    shipment = register(ctx.store, ctx.partners, driver.order.id)
    policy = Policy(customs_poll=Policy().customs_poll * 0)
    with LocalServer(service.app()) as server:
        ports = logistics_ports(ctx, {"eu-customs-ics2": server.url})
        dispatcher = OutboundDispatcher(ctx.store, ctx.partners, ports, policy)
        for _ in range(5):
            asyncio.run(dispatcher.run_once())
    decl = ctx.store.read(lambda s: LogisticsRepository.from_session(s).declaration_for(shipment.id))
    assert decl is not None
    assert decl.status == "released"
    assert decl.mrn
    assert decl.cleared_at
    assert "customs.under-control" in alert_kinds(ctx.store, driver.order.id)


@pytest.mark.slow
def test_a_customs_fault_fails_the_declaration_and_alerts(ctx: HubContext) -> None:
    service = CustomsSandbox(mode="xxe")
    driver = order_at(ctx.store, ctx.partners, "collected")
    shipment = register(ctx.store, ctx.partners, driver.order.id)
    with LocalServer(service.app()) as server:
        dispatcher = OutboundDispatcher(
            ctx.store, ctx.partners, logistics_ports(ctx, {"eu-customs-ics2": server.url}), Policy()
        )
        asyncio.run(dispatcher.run_once())
    decl = ctx.store.read(lambda s: LogisticsRepository.from_session(s).declaration_for(shipment.id))
    assert decl is not None
    assert decl.status == "failed"
    assert "hostile-xml" in (decl.detail or "")
    assert "customs.fault" in alert_kinds(ctx.store, driver.order.id)


def test_profiles_wsdls_exist_under_the_configured_dir() -> None:
    from hub.settings import Settings

    assert (Settings().wsdl_dir / CHANNEL.wsdl).is_file()
    assert Settings().wsdl_dir.resolve() == WSDL_DIR.resolve()


def test_a_declaration_without_the_declarants_eori_is_refused_before_any_call(ctx: HubContext) -> None:
    service = CustomsSandbox()
    driver = order_at(ctx.store, ctx.partners, "collected")
    # UPS's profile names no EORI: there is nobody to declare as presenting the goods.
    shipment = register(ctx.store, ctx.partners, driver.order.id, courier="ups-track-alert", tracking="1Z0000000009")
    with LocalServer(service.app()) as server:
        ports = logistics_ports(ctx, {"eu-customs-ics2": server.url})
        asyncio.run(OutboundDispatcher(ctx.store, ctx.partners, ports, Policy()).run_once())
    assert service.requests == []  # nothing lodged, not even with a placeholder
    decl = ctx.store.read(lambda s: LogisticsRepository.from_session(s).declaration_for(shipment.id))
    assert decl is not None
    assert decl.status == "failed"
    assert (decl.detail or "").startswith("config: ")
    assert "ups-track-alert's EORI (identifiers.eori" in (decl.detail or "")
    assert "customs.config" in alert_kinds(ctx.store, driver.order.id)


class _Authority:
    """A customs service whose status endpoint goes down and comes back (the SOAP client itself is
    tested against the sandbox above)."""

    def __init__(self) -> None:
        self.down = False
        self.answer = "accepted"

    def submit(self, submission: CustomsSubmission) -> None:
        return None

    def status(self, functional_reference: str, mrn: str | None) -> CustomsStatus:
        if self.down:
            raise PartnerCallError("HTTP 503 from the customs service", retryable=True, code="http-503")
        return CustomsStatus(self.answer, "26NL0000000000001", f"ENS event for {self.answer}")


def _followed(ctx: HubContext, policy: Policy) -> tuple[_Authority, OutboundDispatcher, str, str]:
    """A declaration lodged and accepted, followed by a dispatcher with ``policy``."""
    authority = _Authority()
    driver = order_at(ctx.store, ctx.partners, "collected")
    shipment = register(ctx.store, ctx.partners, driver.order.id)
    ports = logistics_ports(ctx)
    ports.customs = lambda partner: authority
    dispatcher = OutboundDispatcher(ctx.store, ctx.partners, ports, policy)
    for _ in range(2):  # lodge, then the first poll: accepted
        _due_now(ctx)
        asyncio.run(dispatcher.run_once())
    return authority, dispatcher, driver.order.id, shipment.id


def _due_now(ctx: HubContext) -> None:
    ctx.store.run(lambda w: w.session.execute(update(OutboundWork).values(next_attempt_at=w.now)))


def _declaration(ctx: HubContext, shipment_id: str) -> tuple[Any, Any]:
    def read(s: Any) -> tuple[Any, Any]:
        repo = LogisticsRepository.from_session(s)
        decl = repo.declaration_for(shipment_id)
        assert decl is not None
        (poll,) = repo.work_for("customs-poll", decl.id)
        return decl, poll

    return ctx.store.read(read)


def test_an_unreachable_authority_never_changes_a_declarations_status(ctx: HubContext) -> None:
    authority, dispatcher, order_id, shipment_id = _followed(ctx, Policy())
    authority.down = True
    for _ in range(Policy().outbound_max_attempts + 2):  # more failed polls than any attempt count
        _due_now(ctx)
        asyncio.run(dispatcher.run_once())
    decl, poll = _declaration(ctx, shipment_id)
    assert (decl.status, poll.status) == ("accepted", "pending")
    assert (poll.last_error or "").startswith("http-503:")
    kinds = alert_kinds(ctx.store, order_id)
    assert kinds.count("customs.unreachable") == 1  # one warning per outage
    assert "customs.fault" not in kinds
    authority.down, authority.answer = False, "released"  # the service is back
    _due_now(ctx)
    asyncio.run(dispatcher.run_once())
    decl, poll = _declaration(ctx, shipment_id)
    assert (decl.status, poll.status) == ("released", "done")


def test_following_a_declaration_gives_up_after_a_silence_not_a_count(ctx: HubContext) -> None:
    authority, dispatcher, order_id, shipment_id = _followed(ctx, Policy(customs_poll_give_up=timedelta(minutes=5)))
    authority.down = True
    _due_now(ctx)
    asyncio.run(dispatcher.run_once())
    assert _declaration(ctx, shipment_id)[1].status == "pending"
    silence = update(CustomsDeclaration).values(last_polled_at=datetime.now(UTC) - timedelta(minutes=6))
    ctx.store.run(lambda w: w.session.execute(silence))  # nothing heard for longer than the limit
    _due_now(ctx)
    asyncio.run(dispatcher.run_once())
    decl, poll = _declaration(ctx, shipment_id)
    assert (decl.status, poll.status) == ("accepted", "failed")  # as last heard; no longer followed
    assert "customs.poll-abandoned" in alert_kinds(ctx.store, order_id)
