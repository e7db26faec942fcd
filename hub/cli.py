"""`cgt-hub`: the operator's command line."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from hub import cli_alerts, cli_decisions
from hub.logs import configure
from hub.settings import Settings

if TYPE_CHECKING:
    from datetime import datetime

    from hub.api.onboarding import ClientChange
    from hub.context import HubContext
    from hub.db.uow import Store

# Pretty tracebacks with locals could print PHI: plain tracebacks only.
app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="CGT Hub: vein-to-vein integration hub.",
)
audit_app = typer.Typer(no_args_is_help=True, help="Verify and checkpoint the hash-chained audit trail.")
partners_app = typer.Typer(no_args_is_help=True, help="Partner profiles.")
orders_app = typer.Typer(no_args_is_help=True, help="Therapy orders.")
db_app = typer.Typer(no_args_is_help=True, help="Database migrations.")
users_app = typer.Typer(no_args_is_help=True, help="People who operate and sign.")
events_app = typer.Typer(no_args_is_help=True, help="Outbox, bus and dead letters.")
messages_app = typer.Typer(
    no_args_is_help=True,
    help="Messages in (inbox: HL7 v2; FHIR requests and courier deliveries with --channel) and HL7 v2 out.",
)
app.add_typer(audit_app, name="audit")
app.add_typer(partners_app, name="partners")
app.add_typer(orders_app, name="orders")
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")
app.add_typer(events_app, name="events")
app.add_typer(messages_app, name="messages")
fhir_app = typer.Typer(no_args_is_help=True, help="FHIR API: partner clients (SMART), subscription deliveries.")
app.add_typer(fhir_app, name="fhir")
# QA and operator decisions on an order (hub/cli_decisions.py)
orders_app.command("holds")(cli_decisions.holds)
orders_app.command("hold")(cli_decisions.hold)
orders_app.command("release-hold")(cli_decisions.release_hold)
orders_app.command("sign-release")(cli_decisions.sign_release)
orders_app.command("cancel")(cli_decisions.cancel)
# The operator's alerts, through the same core code as GET /alerts (hub/cli_alerts.py)
alerts_app = typer.Typer(no_args_is_help=True, help="Alerts: list them, acknowledge them (audited).")
app.add_typer(alerts_app, name="alerts")
alerts_app.command("list")(cli_alerts.list_alerts)
alerts_app.command("ack")(cli_alerts.ack)


def _settings() -> Settings:
    return cli_decisions.load_settings()


def _open_store(*, check: bool = True) -> Store:
    from hub.db.uow import open_store

    settings = _settings()
    return open_store(settings.database_url, check=check, limits=settings.lock_limits)


def _logging(settings: Settings) -> None:
    configure(settings.log_level)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="HTTP bind address")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port")] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, max=32, help="processes sharing the listeners (PostgreSQL only)")
    ] = None,
) -> None:
    """Run the API, the committer, the outbox relay, the bus consumers and the adapters' listeners
    (MLLP on CGTHUB_MLLP_HOST:CGTHUB_MLLP_PORT unless CGTHUB_MLLP_ENABLED=false) and senders.
    With --workers N (CGTHUB_WORKERS), N processes share the listeners; see hub/serve.py."""
    from hub.serve import ServeRefused
    from hub.serve import serve as run

    settings = _settings()
    _logging(settings)
    try:
        code = run(settings, host or settings.http_host, port or settings.http_port, workers or settings.workers)
    except ServeRefused as exc:
        typer.echo(f"refused: {exc}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(code)


@app.command()
def demo() -> None:
    """Run one whole journey and one held identity mismatch on the embedded default."""
    from hub.demo import run_demo

    settings = _settings()
    configure(logging.ERROR)
    raise typer.Exit(run_demo(settings))


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply all migrations."""
    from hub.db.migrate import upgrade

    upgrade(_settings().database_url)
    typer.echo("database is at the latest revision")


@audit_app.command("verify")
def audit_verify(
    checkpoint: Annotated[Path | None, typer.Option(help="a checkpoint saved by `audit checkpoint`")] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, max=64, help="processes (default: one per core, up to 4, from 200,000 entries)"),
    ] = None,
) -> None:
    """Recompute the chain; name the first broken entry and exit 1 if there is one."""
    from hub.audit.chain import CheckpointInvalid
    from hub.audit.service import load_checkpoint, verify_chain

    try:
        cp = load_checkpoint(checkpoint) if checkpoint else None
    except CheckpointInvalid as exc:
        typer.echo(f"checkpoint {checkpoint} not usable: {exc}; nothing was verified", err=True)
        raise typer.Exit(2) from None
    store = _open_store(check=False)
    try:
        result = verify_chain(store, cp, workers=workers)
    finally:
        store.dispose()
    typer.echo(result.describe())
    if result.ok and cp is not None:
        typer.echo(f"checkpoint {checkpoint}: entry {cp.size} still has hash {cp.head} (nothing before it changed)")
    raise typer.Exit(0 if result.ok else 1)


@audit_app.command("checkpoint")
def audit_checkpoint(
    out: Annotated[Path | None, typer.Option(help="also write the checkpoint to this file")] = None,
) -> None:
    """Print the chain's size and head hash (export it somewhere the database cannot reach)."""
    from datetime import UTC, datetime

    from hub.audit.service import take_checkpoint

    store = _open_store(check=False)
    try:
        cp = take_checkpoint(store)
    finally:
        store.dispose()
    doc = {**cp.as_dict(), "taken_at": datetime.now(UTC).isoformat()}
    text = json.dumps(doc)
    if out is not None:
        out.write_text(text + "\n", encoding="utf-8")
    typer.echo(text)


@partners_app.command("check")
def partners_check(
    directory: Annotated[Path | None, typer.Argument(help="profiles directory")] = None,
) -> None:
    """Validate every partner profile against the schema; errors name file and line."""
    from adapters.registry import ADAPTERS, channel_schemas
    from hub.partners.loader import load_directory

    directory = directory or _settings().profiles_dir
    partners, errors = load_directory(directory, channel_schemas())
    for error in errors:
        typer.echo(str(error), err=True)
    for profile in partners.profiles.values():
        pending = sorted({c.adapter for c in profile.channels if ADAPTERS[c.adapter].module is None})
        note = f"  (adapters not built yet: {', '.join(pending)})" if pending else ""
        typer.echo(f"ok  {profile.id:<28} {profile.kind.value:<20} tier {int(profile.tier)}{note}")
    if errors:
        typer.echo(f"{len(errors)} error(s)", err=True)
        raise typer.Exit(1)


@orders_app.command("show")
def orders_show(key: Annotated[str, typer.Argument(help="order id or CoI (barcode, eye-readable or data)")]) -> None:
    """The order's journey as a timeline."""
    from hub.orders import timeline

    store = _open_store(check=False)
    try:
        tl = store.read(lambda s: timeline.build(s, key))
    finally:
        store.dispose()
    if tl is None:
        typer.echo(f"no order with id or CoI {key!r}", err=True)
        raise typer.Exit(1)
    typer.echo(timeline.render(tl, color=sys.stdout.isatty()))


@orders_app.command("list")
def orders_list(limit: int = 20) -> None:
    """The most recent orders."""
    from sqlalchemy import select

    from hub.db.models import TherapyOrder

    store = _open_store(check=False)
    try:
        rows = store.read(
            lambda s: list(s.scalars(select(TherapyOrder).order_by(TherapyOrder.created_at.desc()).limit(limit)))
        )
    finally:
        store.dispose()
    for o in rows:
        typer.echo(f"{o.created_at:%Y-%m-%d %H:%M}  {o.coi}  {o.product_code:<12} {o.stage:<26} {o.status:<9} {o.id}")


@users_app.command("add")
def users_add(
    username: str,
    name: Annotated[str, typer.Option(help="printed name shown on signatures")],
    role: Annotated[list[str], typer.Option(help="operator, qa or admin (repeatable)")],
) -> None:
    """Add a person who can sign. The password is read from CGTHUB_NEW_USER_PASSWORD or prompted."""
    from hub.errors import HubError
    from hub.signatures.service import add_user

    password = os.environ.get("CGTHUB_NEW_USER_PASSWORD") or typer.prompt(
        "password", hide_input=True, confirmation_prompt=True
    )
    store = _open_store()
    try:
        store.run(lambda w: add_user(w, username, name, set(role), password), actor="cli")
    except HubError as exc:
        typer.echo(f"user {username} not added: {exc.message}", err=True)
        raise typer.Exit(1) from None
    finally:
        store.dispose()
    typer.echo(f"user {username} added")


@users_app.command("unlock")
def users_unlock(
    username: str,
    reason: Annotated[str, typer.Option(help="why (kept in the audit trail)")],
) -> None:
    """End a signing lockout (after repeated failed re-authentications) before its time. Audited,
    with the operator ($USER) and the reason."""
    from hub.errors import HubError
    from hub.signatures.service import unlock_user

    store = _open_store()
    try:
        store.run(lambda w: unlock_user(w, username, reason), actor=os.environ.get("USER", "cli"))
    except HubError as exc:
        typer.echo(f"user {username} not unlocked: {exc.message}", err=True)
        raise typer.Exit(1) from None
    finally:
        store.dispose()
    typer.echo(f"user {username} may sign again")


@events_app.command("drain")
def events_drain() -> None:
    """Publish every pending outbox event through the configured bus, then stop."""
    from hub.runtime import build_runtime

    settings = _settings()
    _logging(settings)

    async def go() -> int:
        runtime = build_runtime(settings)
        await runtime.start(run_relay=False)
        try:
            return await runtime.relay.drain()
        finally:
            await runtime.stop()
            runtime.ctx.store.dispose()

    typer.echo(f"published {asyncio.run(go())} events")


@events_app.command("dead")
def events_dead() -> None:
    """List dead-lettered events (not yet replayed)."""
    from sqlalchemy import select

    from hub.db.models import DeadLetter

    store = _open_store(check=False)
    try:
        rows = store.read(lambda s: list(s.scalars(select(DeadLetter).where(DeadLetter.replayed_at.is_(None)))))
    finally:
        store.dispose()
    for d in rows:
        typer.echo(
            f"{d.id}  {d.dead_at:%Y-%m-%d %H:%M}  {d.consumer:<16} {d.event_type:<24} {d.event_id}  {d.last_error}"
        )
    if not rows:
        typer.echo("no dead letters")


@events_app.command("replay")
def events_replay(
    dead_letter_id: Annotated[list[str], typer.Argument(help="ids from `cgt-hub events dead`")],
    by: Annotated[str, typer.Option(help="who replays (recorded in the audit trail)")] = "operator",
) -> None:
    """Run dead-lettered events through their consumer again, once the cause is fixed."""
    from hub.errors import HubError
    from hub.messaging.consumers import replay_dead_letter
    from hub.runtime import all_consumers

    ctx = _messages_ctx()
    failed = 0
    try:
        consumers = all_consumers(ctx)
        for dead_id in dead_letter_id:
            try:
                result = replay_dead_letter(ctx.store, consumers, dead_id, actor=f"cli:{by}")
                typer.echo(f"{dead_id}  {result}")
            except HubError as exc:
                failed += 1
                typer.echo(f"{dead_id}  not replayed: {exc.message}", err=True)
            except Exception as exc:  # the handler failed again: the dead letter stays
                failed += 1
                typer.echo(f"{dead_id}  failed again: {type(exc).__name__}; the dead letter stays", err=True)
    finally:
        ctx.store.dispose()
    raise typer.Exit(1 if failed else 0)


def _messages_ctx() -> HubContext:
    from hub.context import build_context

    return build_context(_settings(), check_store=False)


@messages_app.command("list")
def messages_list(
    direction: Annotated[str, typer.Option(help="in, out or all")] = "all",
    status: Annotated[str | None, typer.Option(help="e.g. handled, rejected, failed, pending, dead")] = None,
    partner: Annotated[str | None, typer.Option(help="partner id")] = None,
    since: Annotated[
        str | None, typer.Option(help="only newer: 30m, 2h, 1d, or an ISO 8601 time (UTC without an offset)")
    ] = None,
    channel: Annotated[
        str, typer.Option(help="inbox channel: hl7v2-mllp, fhir-rest, courier-webhook, courier-telemetry or all")
    ] = "hl7v2-mllp",
    ids: Annotated[
        bool, typer.Option("--ids", help="print only the ids, oldest first (for `messages replay`)")
    ] = False,
    limit: int = 50,
) -> None:
    """Newest messages, in and out (ids, types, statuses; no PHI): HL7 v2 by default; --channel
    lists FHIR requests and courier deliveries the hub took in too."""
    from adapters.hl7v2.ops import list_messages
    from hub.context import HubContext
    from hub.errors import HubError

    try:
        after = _since(since) if since else None
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    ctx = _messages_ctx()
    assert isinstance(ctx, HubContext)
    try:
        rows = list_messages(
            ctx, direction=direction, status=status, partner=partner, limit=limit, since=after, channel=channel
        )
    except HubError as exc:
        typer.echo(exc.message, err=True)
        raise typer.Exit(2) from None
    finally:
        ctx.store.dispose()
    if ids:
        for r in reversed(rows):
            typer.echo(r.id)
        return
    for r in rows:
        typer.echo(
            f"{r.at:%Y-%m-%d %H:%M:%S}  {r.direction:<3} {r.id:<38} {r.partner:<24} {r.message_type:<8} "
            f"{r.external_id[:22]:<22} {r.status:<11} {r.detail}"
        )
    if not rows:
        typer.echo("no messages")


def _since(text: str) -> datetime:
    """``30m``, ``2h``, ``1d`` ago, or an ISO 8601 time (UTC when it names no offset)."""
    from datetime import UTC, datetime, timedelta

    units = {"m": 60, "h": 3600, "d": 86400}
    if text[:-1].isdigit() and text[-1:] in units:
        return datetime.now(UTC) - timedelta(seconds=int(text[:-1]) * units[text[-1]])
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since {text!r}: give 30m, 2h, 1d or an ISO 8601 time like 2026-12-03T02:00") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


@messages_app.command("show")
def messages_show(
    key: Annotated[str, typer.Argument(help="inbox message id, or out:<n> for an outbound message")],
    unmasked: Annotated[bool, typer.Option(help="show PHI in the clear (the read is audited)")] = False,
) -> None:
    """One message with PHI masked, its answer, and (outbound) every delivery attempt."""
    from adapters.hl7v2.ops import show
    from hub.context import HubContext
    from hub.errors import HubError

    ctx = _messages_ctx()
    assert isinstance(ctx, HubContext)
    try:
        typer.echo(show(ctx, key, unmasked=unmasked, operator=os.environ.get("USER", "cli")))
    except HubError as exc:
        typer.echo(exc.message, err=True)
        raise typer.Exit(1) from None
    finally:
        ctx.store.dispose()


@messages_app.command("replay")
def messages_replay(
    keys: Annotated[
        list[str],
        typer.Argument(
            help="inbox message ids and/or out:<n>; several are replayed in the order the messages happened",
            metavar="KEY...",
        ),
    ],
    send: Annotated[bool, typer.Option(help="outbound: deliver now instead of waiting for `serve`")] = False,
    rebuild: Annotated[
        bool,
        typer.Option(
            help="outbound: build the message again from its snapshot with the partner's current profile and"
            " mappings, under a new control id (default: resend the same bytes)"
        ),
    ] = False,
) -> None:
    """Interpret failed/rejected inbox messages again, or resend dead outbound messages. Exit 1 if
    any was not replayed or is still refused (each is reported on its own line)."""
    from adapters.hl7v2.ops import replay, replay_order
    from hub.context import HubContext
    from hub.errors import HubError

    ctx = _messages_ctx()
    assert isinstance(ctx, HubContext)
    failed = 0
    operator = os.environ.get("USER", "cli")
    try:
        for key in replay_order(ctx, keys):
            try:
                result = replay(ctx, key, operator=operator, rebuild=rebuild)
            except HubError as exc:
                failed += 1
                typer.echo(f"{key}: not replayed: {exc.message}", err=True)
                continue
            if result.startswith(("rejected", "failed")):
                failed += 1
                typer.echo(f"{key}: {result}", err=True)
            else:
                typer.echo(f"{key}: {result}")
        if send and any(k.startswith("out:") for k in keys):
            from adapters.hl7v2.service import sender_for

            sender = sender_for(ctx)
            delivered, busy = asyncio.run(_deliver(sender))
            typer.echo(f"delivered {delivered} message(s)")
            for partner in busy:
                typer.echo(f"{partner}: a running hub holds this partner's sending lease and delivers it itself")
    finally:
        ctx.store.dispose()
    raise typer.Exit(1 if failed else 0)


async def _deliver(sender: object) -> tuple[int, list[str]]:
    from adapters.hl7v2.outbound import OutboundSender

    assert isinstance(sender, OutboundSender)
    try:
        return await sender.deliver_all(timeout_s=60), sender.busy
    finally:
        await sender.close()
        await sender.release_leases()  # a serving hub need not wait for them to expire


@messages_app.command("quarantine")
def messages_quarantine(
    key: Annotated[str, typer.Argument(help="inbox message id, or out:<n> for an outbound message")],
    reason: Annotated[str, typer.Option(help="why (kept in the audit trail)")],
) -> None:
    """Set a message aside (an outbound one is no longer sent)."""
    from adapters.hl7v2.ops import quarantine
    from hub.context import HubContext
    from hub.errors import HubError

    ctx = _messages_ctx()
    assert isinstance(ctx, HubContext)
    try:
        typer.echo(f"{key}: {quarantine(ctx, key, reason, operator=os.environ.get('USER', 'cli'))}")
    except HubError as exc:
        typer.echo(exc.message, err=True)
        raise typer.Exit(1) from None
    finally:
        ctx.store.dispose()


# --------------------------------------------------------------------------- FHIR API (issue 4)
@fhir_app.command("register-client")
def fhir_register_client(
    partner: Annotated[str, typer.Argument(help="partner id (the profile's file name)")],
    jwks: Annotated[Path | None, typer.Option(help="the client's public JWKS (JSON file), registered inline")] = None,
    jwks_url: Annotated[str | None, typer.Option(help="where the client publishes its JWKS")] = None,
    generate_key: Annotated[
        Path | None, typer.Option(help="TESTING: generate a key pair, write the private key here (0600)")
    ] = None,
    alg: Annotated[str, typer.Option(help="ES384 or RS384 (with --generate-key)")] = "ES384",
    scope: Annotated[list[str] | None, typer.Option(help="allowed scope, repeatable (system/Type.cruds)")] = None,
    client_id: Annotated[str | None, typer.Option(help="default: the partner id")] = None,
    name: Annotated[str | None, typer.Option(help="creates the profile if it does not exist")] = None,
    kind: Annotated[str, typer.Option(help="partner kind for a new profile")] = "hospital",
    timezone: Annotated[str, typer.Option(help="IANA zone for a new profile")] = "UTC",
    notify_url: Annotated[
        list[str] | None,
        typer.Option(help="a Subscription endpoint base URL (scheme, host, port, path prefix; host:* for any port)"),
    ] = None,
    manufacturing: Annotated[str | None, typer.Option(help="default manufacturing site for its orders")] = None,
    replace_key: Annotated[bool, typer.Option(help="with --generate-key: overwrite an existing key file")] = False,
    reason: Annotated[str, typer.Option(help="why (kept in the audit trail)")] = "partner client onboarding",
) -> None:
    """Register a partner's FHIR client (public JWKS or JWKS URL, scopes) in its profile. The change
    is written to the hub database's audit trail (who, client id, key thumbprints, scopes, why)
    before the profile is replaced; without a migrated database nothing is registered."""
    from adapters.registry import channel_schemas
    from hub.api.onboarding import DEFAULT_SCOPES, register_client
    from hub.partners.loader import ProfileLoadError

    settings = _settings()
    try:
        keys = json.loads(jwks.read_text(encoding="utf-8")) if jwks else None
    except (OSError, ValueError) as exc:
        typer.echo(f"not registered: cannot read the JWKS {jwks} ({_reading_error(exc)})", err=True)
        raise typer.Exit(1) from None
    try:
        done = register_client(
            settings.profiles_dir,
            partner,
            channel_schemas(),
            jwks=keys,
            jwks_url=jwks_url,
            generate=generate_key,
            alg=alg,
            scopes=tuple(scope or DEFAULT_SCOPES),
            client_id=client_id,
            name=name,
            kind=kind,
            timezone=timezone,
            notify_urls=tuple(notify_url or ()),
            order_defaults={"manufacturing": manufacturing} if manufacturing else None,
            replace_key=replace_key,
            record=lambda change: _audit_client_change(change, reason),
        )
    except (ValueError, ProfileLoadError, ChangeNotRecorded) as exc:
        typer.echo(f"not registered: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"client {done.client_id} registered in {done.profile}")
    if done.private_key:
        typer.echo(f"private key (testing only, keep it out of the repository): {done.private_key}")
    typer.echo("restart `cgt-hub serve` to load the profile")


def _reading_error(exc: Exception) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else f"not JSON: {exc}"


class ChangeNotRecorded(Exception):
    """The audit trail could not take the change, so the change was not made."""


def _audit_client_change(change: ClientChange, reason: str) -> None:
    """Record a partner client registration in the audit trail, by the operator running the
    command: a new client with PHI scopes is an access change the trail must show."""
    from sqlalchemy.exc import SQLAlchemyError

    from hub.errors import HubError

    action = "create" if change.old is None else "update"
    try:
        store = _open_store()
        try:
            store.run(
                lambda w: w.audit(
                    action, "PartnerClient", change.partner_id, old=change.old, new=change.new, reason=reason
                ),
                actor=os.environ.get("USER", "cli"),
            )
        finally:
            store.dispose()
    except (HubError, SQLAlchemyError, OSError) as exc:
        raise ChangeNotRecorded(
            f"the audit trail could not record it ({type(exc).__name__}); is CGTHUB_DATABASE_URL the hub's "
            "database and migrated (`cgt-hub db upgrade`)?"
        ) from None


@fhir_app.command("client-assertion")
def fhir_client_assertion(
    key: Annotated[Path, typer.Option(help="the client's private key (PEM)")],
    client_id: Annotated[str, typer.Option(help="the registered client id")],
    token_url: Annotated[str, typer.Option(help="the hub's token endpoint")] = "http://127.0.0.1:8080/auth/token",  # noqa: S107
    alg: Annotated[str, typer.Option(help="ES384 or RS384")] = "ES384",
) -> None:
    """Print a signed client assertion (what the partner's software makes) for trying the API."""
    from hub.api.onboarding import client_assertion

    typer.echo(client_assertion(key.read_bytes(), client_id, token_url, alg))


@fhir_app.command("deliveries")
def fhir_deliveries(
    status: Annotated[str | None, typer.Option(help="pending, delivered, failed or skipped")] = None,
    limit: int = 50,
) -> None:
    """Subscription notifications and their attempts."""
    from sqlalchemy import select

    from hub.db.models_fhirapi import SubscriptionDelivery

    store = _open_store(check=False)
    try:
        stmt = select(SubscriptionDelivery).order_by(SubscriptionDelivery.created_at.desc()).limit(limit)
        if status:
            stmt = stmt.where(SubscriptionDelivery.status == status)
        rows = store.read(lambda s: list(s.scalars(stmt)))
    finally:
        store.dispose()
    for d in rows:
        typer.echo(
            f"{d.created_at:%Y-%m-%d %H:%M:%S}  {d.id}  {d.status:<9} attempts={d.attempts}  "
            f"{d.partner_id:<20} {d.focus}  {d.last_error or ''}"
        )
    if not rows:
        typer.echo("no deliveries")


@fhir_app.command("replay")
def fhir_replay(delivery_id: str) -> None:
    """Queue a subscription notification again (e.g. after the partner fixed its endpoint)."""
    from adapters.fhir.notify import replay
    from hub.errors import HubError

    store = _open_store()
    try:
        replay(store, delivery_id, actor="cli")
    except HubError as exc:
        typer.echo(f"delivery {delivery_id} not queued: {exc.message}", err=True)
        raise typer.Exit(1) from None
    finally:
        store.dispose()
    typer.echo(f"delivery {delivery_id} queued again")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
