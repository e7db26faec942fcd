"""`cgt-hub alerts list|ack`: the operator's alerts at the hub's own command line.

Without these commands alerts were reachable only through ``GET /alerts`` with the operator token,
so an operator on the hub's machine (or a serving hub that would not start its API) could not see
or take on an alert.

* Both go through the same core code as the HTTP route: ``AlertRepository.search`` lists (the
  same filters: ``--kind`` is a prefix, ``--open`` is ``state=open``), ``AlertService.acknowledge``
  acknowledges (audited, ``alert.acknowledged`` announced). The acknowledgement is checked by the
  route's own schema (``Acknowledge``).
* The person who takes an alert on is the operator, ``$USER`` (as for ``orders hold``); the
  ``--reason`` is the acknowledgement's note and the audit entry's reason.
* Several ids are acknowledged one by one, each reported on its own line; exit 1 if one was not
  (unknown, already acknowledged). A filter the command cannot read exits 2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

import typer

from hub.cli_decisions import _operator, load_settings

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy.orm import Session

    from hub.db.models import Alert
    from hub.db.uow import Store, Work

Severity = Literal["info", "warning", "critical"]


def _store(*, check: bool) -> Store:
    from hub.db.uow import open_store

    settings = load_settings()
    return open_store(settings.database_url, check=check, limits=settings.lock_limits)


def list_alerts(
    open_only: Annotated[bool, typer.Option("--open", help="only alerts nobody acknowledged yet")] = False,
    severity: Annotated[Severity | None, typer.Option(help="info, warning or critical")] = None,
    kind: Annotated[str | None, typer.Option(help="a kind or its prefix, e.g. hl7v2. or temperature.")] = None,
    order: Annotated[str | None, typer.Option(help="only this order's alerts (id or CoI)")] = None,
    since: Annotated[
        str | None, typer.Option(help="raised after: 30m, 2h, 1d, or an ISO 8601 time (UTC without an offset)")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 100,
) -> None:
    """Newest alerts first: when, id, severity, kind, OPEN or who acknowledged it, escalation level,
    order, message (alert messages carry ids and codes, never PHI)."""
    from hub.alerts.repository import AlertRepository
    from hub.cli import _since
    from hub.orders.repository import OrderRepository

    try:
        after = _since(since) if since else None
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    if len(kind or "") > 64 or len(order or "") > 64:
        typer.echo("--kind and --order are at most 64 characters", err=True)
        raise typer.Exit(2)

    def read(session: Session) -> list[tuple[Alert, int]]:
        order_id = order
        if order is not None:
            found = OrderRepository.from_session(session).find(order)
            order_id = found.id if found is not None else order
        return AlertRepository.from_session(session).search(
            order_id=order_id,
            severity=severity,
            kind=kind,
            state="open" if open_only else "all",
            since=after,
            limit=limit,
        )

    store = _store(check=False)
    try:
        rows = store.read(read)
    finally:
        store.dispose()
    for alert, level in rows:
        typer.echo(_line(alert, level))
    if not rows:
        typer.echo("no alerts")


def _line(alert: Alert, level: int) -> str:
    if alert.acknowledged_at is None:
        state = "OPEN"
    else:
        state = f"acknowledged by {alert.acknowledged_by} {alert.acknowledged_at:%Y-%m-%d %H:%M}Z"
    escalated = f"  escalated L{level}" if level else ""
    return (
        f"{alert.raised_at:%Y-%m-%d %H:%M:%S}  {alert.id}  {alert.severity:<8} {alert.kind:<30} {state}{escalated}"
        f"  order {alert.order_id or '-'}  {alert.message}"
    )


def ack(
    alert_ids: Annotated[list[str], typer.Argument(help="alert ids (`cgt-hub alerts list`)", metavar="ID...")],
    reason: Annotated[str, typer.Option(help="what is being done about it (kept in the audit trail)")],
) -> None:
    """Acknowledge alerts: the operator ($USER) takes them on, which stops their escalation."""
    from pydantic import ValidationError

    from hub.alerts.schemas import Acknowledge
    from hub.errors import HubError, NotFound

    operator = _operator()
    try:
        body = Acknowledge(by=operator, note=reason)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        typer.echo(f"invalid: {problems} (by is $USER)", err=True)
        raise typer.Exit(1) from None
    failed = 0
    store = _store(check=True)
    try:
        for alert_id in alert_ids:
            try:
                if len(alert_id) > 36:  # longer than any alert id (and than the audit trail's entity id)
                    raise NotFound(f"alert {alert_id[:40]}… is not known")
                store.run(_acknowledge(alert_id, body.by, body.note), actor=operator)
            except HubError as exc:
                failed += 1
                typer.echo(f"{alert_id[:40]}: not acknowledged: {exc.message}", err=True)
                continue
            typer.echo(f"{alert_id}: acknowledged by {body.by}")
    finally:
        store.dispose()
    raise typer.Exit(1 if failed else 0)


def _acknowledge(alert_id: str, by: str, note: str | None) -> Callable[[Work], Alert]:
    from hub.alerts.service import AlertService

    return lambda work: AlertService(work).acknowledge(alert_id, by, note)
