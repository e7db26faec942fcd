"""The operator commands, run as a new user would: in a fresh directory, on the embedded default."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).parent / "cgt-hub"


def run(args: list[str], cwd: Path, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CGTHUB_")}
    environment.update(env)
    return subprocess.run(
        [str(CLI), *args], cwd=cwd, env=environment, input=stdin, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("demo")
    shutil.copytree(ROOT / "partner-profiles", work / "partner-profiles")
    result = run(["demo"], work)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "MISMATCH" in result.stdout
    assert "Advance refused" in result.stdout
    assert "audit chain intact" in result.stdout
    assert "POST ServiceRequest → 201" in result.stdout  # the order placed over FHIR
    assert (work / "var" / "cgthub.db").is_file()
    again = run(["demo"], work)  # a second run adds orders to the same database
    assert again.returncode == 0, again.stdout + again.stderr
    return work


def test_demo_leaves_a_database_the_other_commands_read(demo_dir: Path) -> None:
    con = sqlite3.connect(demo_dir / "var" / "cgthub.db")
    cois = [r[0] for r in con.execute("SELECT coi FROM therapy_order ORDER BY created_at")]
    con.close()
    shown = run(["orders", "show", cois[0]], demo_dir)
    assert shown.returncode == 0
    assert "Administered" in shown.stdout
    assert "COMPLETED" in shown.stdout
    held = run(["orders", "show", cois[1]], demo_dir)
    assert "ON-HOLD" in held.stdout
    assert "MISMATCH" in held.stdout
    assert run(["orders", "show", "CHZ999900000000"], demo_dir).returncode == 1
    assert run(["audit", "verify"], demo_dir).returncode == 0


def test_events_dead_and_replay(demo_dir: Path) -> None:
    """The replay command runs with the hub's consumers (replay itself: tests/hub/messaging)."""
    listed = run(["events", "dead"], demo_dir)
    assert listed.returncode == 0, listed.stderr
    assert "no dead letters" in listed.stdout
    unknown = run(["events", "replay", "0190f0f0-0000-7000-8000-000000000000"], demo_dir)
    assert unknown.returncode == 1
    assert "not replayed: dead letter 0190f0f0-0000-7000-8000-000000000000 is not known" in unknown.stderr


def test_audit_checkpoint_catches_truncation(demo_dir: Path, tmp_path: Path) -> None:
    work = tmp_path / "copy"
    shutil.copytree(demo_dir, work)
    cp = run(["audit", "checkpoint", "--out", str(tmp_path / "cp.json")], work)
    assert cp.returncode == 0
    size = json.loads(cp.stdout)["size"]
    intact = run(["audit", "verify", "--checkpoint", str(tmp_path / "cp.json")], work)
    assert intact.returncode == 0
    assert f"entry {size} still has hash" in intact.stdout  # says the checkpoint was compared
    con = sqlite3.connect(work / "var" / "cgthub.db")
    last = con.execute("SELECT seq, prev_hash FROM audit_entry ORDER BY seq DESC LIMIT 2").fetchall()
    con.execute("DELETE FROM audit_entry WHERE seq = ?", (size,))
    con.execute("UPDATE audit_head SET seq = ?, hash = ?", (size - 1, last[0][1]))
    con.commit()
    con.close()
    assert run(["audit", "verify"], work).returncode == 0  # consistent after a tidy truncation...
    caught = run(["audit", "verify", "--checkpoint", str(tmp_path / "cp.json")], work)
    assert caught.returncode == 1
    assert f"BROKEN at entry {size}" in caught.stdout


def test_audit_verify_names_the_edited_entry(demo_dir: Path, tmp_path: Path) -> None:
    work = tmp_path / "copy"
    shutil.copytree(demo_dir, work)
    con = sqlite3.connect(work / "var" / "cgthub.db")
    con.execute("UPDATE audit_entry SET reason = 'nothing to see' WHERE seq = 17")
    con.commit()
    con.close()
    result = run(["audit", "verify"], work)
    assert result.returncode == 1
    assert "BROKEN at entry 17" in result.stdout


def test_partners_check_reports_lines(tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_text("id: x\nname: X\nkind: spaceport\ntier: 1\n")
    result = run(["partners", "check", str(tmp_path)], tmp_path)
    assert result.returncode == 1
    assert "x.yaml:3: kind" in result.stderr
    ok = run(["partners", "check", str(ROOT / "partner-profiles")], tmp_path)
    assert ok.returncode == 0
    assert "st-marys" in ok.stdout


def test_production_mode_refuses_default_secrets(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "partner-profiles", tmp_path / "partner-profiles")
    result = run(["demo"], tmp_path, CGTHUB_ENV="production")
    assert result.returncode != 0
    assert "refusing to start in production mode" in result.stderr


def test_qa_releases_an_identity_hold_by_a_signed_decision_at_the_command_line(demo_dir: Path) -> None:
    """An identity mismatch holds the order and only a signed QA decision releases it, but that
    decision could be taken only in Python: a QA person at the hub had no way to take it."""
    con = sqlite3.connect(demo_dir / "var" / "cgthub.db")
    coi, hold_id = con.execute(
        "SELECT o.coi, h.id FROM order_hold h JOIN therapy_order o ON o.id = h.order_id"
        " WHERE h.released_at IS NULL AND h.kind = 'identity-mismatch' ORDER BY h.opened_at DESC"
    ).fetchone()
    con.close()
    password = "correct horse battery staple"
    for user, role in (("op.olga", "operator"), ("qa.quinn", "qa")):
        added = run(
            ["users", "add", user, "--name", user.title(), "--role", role], demo_dir, CGTHUB_NEW_USER_PASSWORD=password
        )
        assert added.returncode == 0, added.stderr
    listed = run(["orders", "holds", coi], demo_dir)
    assert listed.returncode == 0, listed.stderr
    assert hold_id in listed.stdout
    assert "identity-mismatch" in listed.stdout
    assert "OPEN" in listed.stdout

    release = ["orders", "release-hold", coi, hold_id, "--rationale", "label and wristband re-checked by QA"]
    wrong = run([*release, "--signer", "qa.quinn", "--password-stdin"], demo_dir, stdin="not the password\n")
    assert wrong.returncode == 1
    assert "Traceback" not in wrong.stderr
    assert "authentication" in wrong.stderr
    operator = run([*release, "--signer", "op.olga", "--password-stdin"], demo_dir, stdin=password + "\n")
    assert operator.returncode == 1
    assert "qa" in operator.stderr
    # one line, said once (it was "... needs the qa role (... needs the qa role)")
    assert operator.stderr.count("needs the qa role") == 1, operator.stderr
    assert "OPEN" in run(["orders", "holds", coi], demo_dir).stdout  # refused decisions wrote nothing

    released = run([*release, "--signer", "qa.quinn", "--password-stdin"], demo_dir, stdin=password + "\n")
    assert released.returncode == 0, released.stderr
    assert f"hold {hold_id} released" in released.stdout
    assert "released by qa.quinn" in run(["orders", "holds", coi], demo_dir).stdout
    again = run([*release, "--signer", "qa.quinn", "--password-stdin"], demo_dir, stdin=password + "\n")
    assert again.returncode == 1
    assert "already released" in again.stderr
    assert run(["audit", "verify"], demo_dir).returncode == 0


def test_a_coi_with_a_wrong_check_character_names_no_order(demo_dir: Path) -> None:
    from hub.identity.isbt128 import check_character

    con = sqlite3.connect(demo_dir / "var" / "cgthub.db")
    (coi,) = con.execute("SELECT coi FROM therapy_order ORDER BY created_at").fetchone()
    con.close()
    right = check_character(coi)
    wrong = "0" if right != "0" else "1"
    assert run(["orders", "show", coi + right], demo_dir).returncode == 0
    shown = run(["orders", "show", coi + wrong], demo_dir)
    assert shown.returncode == 1
    unknown = run(["orders", "holds", coi + wrong], demo_dir)
    assert unknown.returncode == 1
    assert unknown.stderr.count("no order with id or CoI") == 1, unknown.stderr


def test_the_demo_refuses_a_database_a_running_hub_serves(demo_dir: Path) -> None:
    """With `cgt-hub serve` on the same database, the hub's workers took the demo's courier booking
    and failed it for good (a critical alert in the operator's database): the demo now refuses."""
    con = sqlite3.connect(demo_dir / "var" / "cgthub.db")
    with con:
        con.execute("INSERT INTO lease VALUES ('outbox-relay', 'ops-host:4242:1', '2999-01-01 00:00:00.000000')")
    try:
        refused = run(["demo"], demo_dir)
    finally:
        with con:
            con.execute("DELETE FROM lease WHERE holder = 'ops-host:4242:1'")
        con.close()
    assert refused.returncode == 1
    assert "a hub is serving this database (outbox-relay held by ops-host:4242:1" in refused.stdout


def test_audit_verify_refuses_an_unusable_checkpoint(sqlite_url: str, tmp_path: Path) -> None:
    """A checkpoint `audit checkpoint` cannot have written is refused with the reason and exit 2
    (not a traceback, and not "confirmed")."""
    (tmp_path / "cp.json").write_text(json.dumps({"size": "0", "head": ""}))
    for path in (tmp_path / "cp.json", tmp_path / "missing.json"):
        result = run(["audit", "verify", "--checkpoint", str(path)], tmp_path, CGTHUB_DATABASE_URL=sqlite_url)
        assert result.returncode == 2, result.stdout + result.stderr
        assert f"checkpoint {path} not usable" in result.stderr
        assert "Traceback" not in result.stderr
        assert "still has hash" not in result.stdout


@pytest.mark.parametrize(
    ("args", "password", "says"),
    [
        (["--role", "QA"], "long enough password", "unknown roles ['QA']"),
        (["--role", "qa"], "short", "at least 12 characters"),
        (["--role", "qa", "--name", "  "], "long enough password", "needs a printed name"),
    ],
)
def test_users_add_refusals_are_one_clear_line(
    sqlite_url: str, tmp_path: Path, args: list[str], password: str, says: str
) -> None:
    result = run(
        ["users", "add", "bob", "--name", "Bob B", *args],
        tmp_path,
        CGTHUB_DATABASE_URL=sqlite_url,
        CGTHUB_NEW_USER_PASSWORD=password,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("user bob not added: ")
    assert says in result.stderr
    assert "Traceback" not in result.stderr


def test_fhir_replay_of_an_unknown_delivery(sqlite_url: str, tmp_path: Path) -> None:
    shutil.copytree(ROOT / "partner-profiles", tmp_path / "partner-profiles")
    result = run(["fhir", "replay", "nope"], tmp_path, CGTHUB_DATABASE_URL=sqlite_url)
    assert result.returncode == 1
    assert "delivery nope not queued:" in result.stderr
    assert "Traceback" not in result.stderr


def test_users_unlock_ends_a_signing_lockout(sqlite_url: str, tmp_path: Path) -> None:
    from hub.db.models import AppUser, AuditEntry
    from hub.db.uow import open_store
    from hub.signatures.service import add_user

    store = open_store(sqlite_url)
    try:
        store.run(lambda w: add_user(w, "qa.jane", "Jane Quality", {"qa"}, "correct horse battery"))
        con = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))
        con.execute("UPDATE app_user SET locked_until = '2999-01-01 00:00:00', failed_signing_attempts = 0")
        con.commit()
        con.close()
        env = {"CGTHUB_DATABASE_URL": sqlite_url, "USER": "ops.anna"}
        unknown = run(["users", "unlock", "nobody", "--reason", "typo"], tmp_path, **env)
        assert unknown.returncode == 1
        assert "user nobody not unlocked: user nobody is not known" in unknown.stderr
        done = run(["users", "unlock", "qa.jane", "--reason", "identity confirmed by phone"], tmp_path, **env)
        assert done.returncode == 0, done.stderr
        assert store.read(lambda s: s.get(AppUser, "qa.jane")).locked_until is None  # type: ignore[union-attr]
        last = store.read(lambda s: s.get(AuditEntry, 2))
        assert last is not None
        assert (last.actor, last.reason) == ("ops.anna", "identity confirmed by phone")
    finally:
        store.dispose()
