"""`cgt-hub alerts list|ack`, run as an operator would (a subprocess on the hub's database): the
same alerts, filters and acknowledgement as GET /alerts, without the operator token."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from hub.db.models import Alert, AuditEntry
from hub.db.models_logistics import AlertAcknowledgement
from hub.logistics.service import raise_alert
from tests.conftest import REPO
from tests.logistics_support import context, drain, events

CLI = Path(sys.executable).parent / "cgt-hub"


def cli(args: list[str], url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CGTHUB_")}
    env.update(CGTHUB_DATABASE_URL=url, CGTHUB_PROFILES_DIR=str(REPO / "partner-profiles"), USER="ops.tester")
    return subprocess.run([str(CLI), *args], env=env, capture_output=True, text=True, timeout=120, cwd=REPO)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_an_operator_lists_and_acknowledges_alerts_at_the_command_line(db_url: str) -> None:
    """Alerts were reachable only over HTTP with the operator token: there was no `cgt-hub alerts`."""
    ctx = context(db_url)
    try:
        ctx.store.run(lambda w: raise_alert(w, "order-1", "critical", "temperature.excursion", "logger L1 at 12 C"))
        ctx.store.run(lambda w: raise_alert(w, None, "warning", "hl7v2.partner-unreachable", "st-marys down"))
        ctx.store.run(lambda w: raise_alert(w, "order-2", "info", "hl7v2.partner-reachable", "st-marys back"))
        drain(ctx)
        alerts = {a.kind: a for a in ctx.store.read(lambda s: list(s.scalars(select(Alert))))}
        unreachable = alerts["hl7v2.partner-unreachable"]

        listed = cli(["alerts", "list"], db_url)
        assert listed.returncode == 0, listed.stderr
        assert len(listed.stdout.splitlines()) == 3
        assert all(a.id in listed.stdout for a in alerts.values())
        hl7 = cli(["alerts", "list", "--kind", "hl7v2.", "--severity", "warning"], db_url)
        assert [line.split()[2] for line in hl7.stdout.splitlines()] == [unreachable.id]
        assert "OPEN" in hl7.stdout
        assert "order-1" in cli(["alerts", "list", "--order", "order-1"], db_url).stdout
        assert len(cli(["alerts", "list", "--order", "order-1"], db_url).stdout.splitlines()) == 1
        assert cli(["alerts", "list", "--since", "1h"], db_url).stdout.count("OPEN") == 3
        assert cli(["alerts", "list", "--since", "2099-01-01T00:00"], db_url).stdout.strip() == "no alerts"
        mistyped = cli(["alerts", "list", "--since", "yesterday"], db_url)
        assert mistyped.returncode == 2
        assert "--since 'yesterday'" in mistyped.stderr
        assert "Traceback" not in mistyped.stderr

        acked = cli(["alerts", "ack", unreachable.id, "--reason", "called St Mary's IT: firewall change"], db_url)
        assert acked.returncode == 0, acked.stderr
        assert f"{unreachable.id}: acknowledged by ops.tester" in acked.stdout
        row = ctx.store.read(lambda s: s.get(Alert, unreachable.id))
        assert row is not None
        assert row.acknowledged_by == "ops.tester"
        note = ctx.store.read(lambda s: s.scalars(select(AlertAcknowledgement)).one())
        assert (note.by, note.note) == ("ops.tester", "called St Mary's IT: firewall change")
        entry = ctx.store.read(
            lambda s: s.scalars(select(AuditEntry).where(AuditEntry.entity_id == unreachable.id)).one()
        )
        assert entry.actor == "ops.tester"
        assert entry.reason == "called St Mary's IT: firewall change"
        assert len(events(ctx.store, "alert.acknowledged")) == 1
        still_open = cli(["alerts", "list", "--open"], db_url)
        assert unreachable.id not in still_open.stdout
        assert len(still_open.stdout.splitlines()) == 2
        assert "acknowledged by ops.tester" in cli(["alerts", "list", "--kind", "hl7v2.partner-un"], db_url).stdout

        # Several at once: each on its own line; an unknown or already acknowledged one exits 1
        # and does not stop the others.
        critical = alerts["temperature.excursion"].id
        mixed = cli(["alerts", "ack", unreachable.id, "no-such-alert", "x" * 300, critical, "--reason", "r"], db_url)
        assert mixed.returncode == 1
        assert f"{unreachable.id}: not acknowledged: alert {unreachable.id} was already acknowledged" in mixed.stderr
        assert "no-such-alert: not acknowledged: alert no-such-alert is not known" in mixed.stderr
        assert "Traceback" not in mixed.stderr
        assert len(mixed.stderr.splitlines()) == 3
        assert ctx.store.read(lambda s: s.get(Alert, critical)).acknowledged_by == "ops.tester"  # type: ignore[union-attr]
        assert cli(["alerts", "ack", critical], db_url).returncode == 2  # --reason is required
    finally:
        ctx.store.dispose()
