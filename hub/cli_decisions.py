"""`cgt-hub orders holds|hold|release-hold|sign-release|cancel`: the decisions a QA person or an
operator takes on an order, at the hub's own command line.

An identity mismatch or a temperature excursion holds the order, and only a signed QA decision
releases it. Without these commands that decision could be taken only in Python.

* Each command goes through the same core command as every adapter (``OrderService``). A refused
  command writes nothing and exits 1 with the reason on one line.
* Signing re-authenticates every time (21 CFR 11.200). The password is prompted with echo off, or
  read as one line from standard input with ``--password-stdin`` (for scripted tests). It is never
  taken from an argument or an environment variable, where it would stay in shell history or in the
  process table.
* An order is named by its id or its CoI (barcode, eye-readable or data content). A CoI typed with
  a wrong check character names no order.
* The operator recorded for a hold or a cancellation is ``$USER``. A release is recorded under the
  signer.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

if TYPE_CHECKING:
    from hub.db.models import TherapyOrder
    from hub.db.uow import Work
    from hub.orders.schemas import SignerCredentials
    from hub.orders.service import OrderService
    from hub.settings import Settings

T = TypeVar("T")
Signer = Annotated[str, typer.Option(help="username of the person signing (see `cgt-hub users add`)")]
PasswordStdin = Annotated[bool, typer.Option(help="read the signer's password from stdin instead of a prompt")]
OrderKey = Annotated[str, typer.Argument(help="order id or CoI")]


def load_settings() -> Settings:
    """The settings, or exit 2 with one line naming the invalid variables (every command that
    reads settings goes through here, so a typo is not answered with a pydantic traceback)."""
    from pydantic import ValidationError

    from hub.settings import get_settings, settings_problem

    try:
        return get_settings()
    except ValidationError as exc:
        typer.echo(f"refused: {settings_problem(exc)}", err=True)
        raise typer.Exit(2) from None


def holds(key: OrderKey) -> None:
    """The order's holds: id, kind, when, why, and whether (and by whom) each was released."""
    from hub.orders.repository import OrderRepository

    def read(work: Work, _: OrderService) -> list[str]:
        repo = OrderRepository.from_session(work.session)
        order = _order(work, key)
        lines = []
        for h in repo.holds(order.id):
            state = f"released by {h.released_by} {h.released_at:%Y-%m-%d %H:%M}Z" if h.released_at else "OPEN"
            lines.append(f"{h.id}  {h.kind:<20} {h.opened_at:%Y-%m-%d %H:%M}Z  {state}  {h.reason}")
        return lines or [f"order {order.id} has no holds"]

    for line in _run(read, actor=_operator()):
        typer.echo(line)


def hold(key: OrderKey, reason: Annotated[str, typer.Option(help="why the order is held")]) -> None:
    """Put the order on hold (a manual hold; an operator or QA releases it with a signed decision)."""
    from hub.orders.schemas import PlaceHold

    def job(work: Work, orders: OrderService) -> str:
        order = _order(work, key)
        return orders.hold(PlaceHold(order_id=order.id, reason=reason)).id

    typer.echo(f"order held: hold {_run(job, actor=_operator())}")


def release_hold(
    key: OrderKey,
    hold_id: Annotated[str, typer.Argument(help="the hold's id (`cgt-hub orders holds`)")],
    rationale: Annotated[str, typer.Option(help="the decision's rationale (at least 10 characters)")],
    signer: Signer,
    password_stdin: PasswordStdin = False,
) -> None:
    """Release a hold by a signed decision. Identity and temperature-excursion holds need a QA signer."""
    from hub.orders.schemas import ReleaseHold

    credentials = _credentials(signer, password_stdin)

    def job(work: Work, orders: OrderService) -> str:
        order = _order(work, key)
        cmd = ReleaseHold(order_id=order.id, hold_id=hold_id, rationale=rationale, signer=credentials)
        return orders.release_hold(cmd).status

    typer.echo(f"hold {hold_id} released; order is {_run(job, actor=signer)}")


def sign_release(
    key: OrderKey,
    reason: Annotated[str, typer.Option(help="what the signature attests")],
    signer: Signer,
    password_stdin: PasswordStdin = False,
) -> None:
    """QA signs the current version of the order's release report (meaning: release)."""
    credentials = _credentials(signer, password_stdin)

    def job(work: Work, orders: OrderService) -> str:
        order = _order(work, key)
        return orders.sign_release(order.id, credentials.username, credentials.password, reason)

    typer.echo(f"release report signed: signature {_run(job, actor=signer)}")


def cancel(key: OrderKey, reason: Annotated[str, typer.Option(help="why the order is cancelled")]) -> None:
    """Cancel the order (its remaining journey Tasks are cancelled)."""
    from hub.orders.schemas import Cancel

    def job(work: Work, orders: OrderService) -> str:
        order = _order(work, key)
        return orders.cancel(Cancel(order_id=order.id, reason=reason)).status

    typer.echo(f"order {_run(job, actor=_operator())}")


# ----------------------------------------------------------------------------- plumbing
def _operator() -> str:
    return os.environ.get("USER") or "cli"


def _credentials(username: str, from_stdin: bool) -> SignerCredentials:
    from hub.orders.schemas import SignerCredentials

    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt(f"password for {username} (re-authentication to sign)", hide_input=True)
    return SignerCredentials(username=username, password=password)


def _order(work: Work, key: str) -> TherapyOrder:
    from hub.errors import NotFound
    from hub.orders.repository import OrderRepository

    order = OrderRepository.from_session(work.session).find(key)
    if order is None:
        raise NotFound(f"no order with id or CoI {key!r}")
    return order


def _run(job: Callable[[Work, OrderService], T], *, actor: str) -> T:
    """Run one job in one transaction; a refusal (or a command the core finds invalid) exits 1
    with its reason on one line and nothing written."""
    from pydantic import ValidationError

    from hub.context import build_context
    from hub.errors import HubError
    from hub.orders.service import OrderService

    ctx = build_context(load_settings())
    try:
        return ctx.store.run(lambda work: job(work, OrderService(work, ctx.partners)), actor=actor)
    except HubError as exc:
        # An error without issues of its own carries its message as its one issue: not said twice.
        details = "; ".join(
            f"{i.location}: {i.message}" if i.location else i.message
            for i in exc.issues
            if i.location or i.message != exc.message
        )
        typer.echo(exc.message + (f" ({details})" if details else ""), err=True)
        raise typer.Exit(1) from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        typer.echo(f"invalid: {problems}", err=True)
        raise typer.Exit(1) from None
    finally:
        ctx.store.dispose()
