"""Kill-and-reconcile (after MessageFoundry): 10,000 messages over 8 connections while the real hub
(`cgt-hub serve`, a separate process) is killed with SIGKILL at ≥ 20 random moments and restarted.
The senders resend whatever was not acknowledged, as interface engines do. Afterwards every message
is classified from the database:

* lost — acknowledged CA, but its inbox row or its effect is missing;
* recovered — its connection died before the ACK at least once, and it ended with one effect;
* unexpected — an ACK that was not CA or named another message, or a row nobody sent;
* duplicated — more than one inbox row or more than one effect for one message.

lost, unexpected and duplicated must be 0. Runs on SQLite and PostgreSQL.

Traffic: nine ADT^A04 (a new patient each) for every ORM^O01 (a new therapy order), all with
MSH-15 AL / MSH-16 NE, so each message gets exactly one commit ACK.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import func, select

from adapters.hl7v2.ack import ack_code_of, acked_control_id
from adapters.hl7v2.framer import Deframer, frame
from hub.db.models import InboxMessage, SearchToken, TherapyOrder
from hub.db.uow import Store, open_store
from tests.adapters.hl7v2 import messages as m
from tests.conftest import REPO

pytestmark = pytest.mark.slow

TOTAL = int(os.environ.get("CGTHUB_KILL_MESSAGES", "10000"))
CONNECTIONS = 8
KILLS = int(os.environ.get("CGTHUB_KILLS", "20"))
CGT_HUB = Path(sys.executable).parent / "cgt-hub"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Item:
    key: str  # MRN (ADT) or placer number (ORM)
    kind: str  # adt | orm
    control_id: str
    payload: bytes
    acked: bool = False
    code: str = ""
    resends: int = 0
    wrong_acks: list[str] = field(default_factory=list)


class Hub:
    def __init__(self, db_url: str, workdir: Path) -> None:
        self.db_url = db_url
        self.workdir = workdir
        self.mllp_port = _free_port()
        self.http_port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = 0
        self.lock = threading.Lock()

    def start(self) -> None:
        env = {
            **os.environ,
            "CGTHUB_DATABASE_URL": self.db_url,
            "CGTHUB_MLLP_PORT": str(self.mllp_port),
            "CGTHUB_HTTP_PORT": str(self.http_port),
            "CGTHUB_PROFILES_DIR": str(self.workdir / "partner-profiles"),
            "CGTHUB_MAPPINGS_DIR": str(REPO / "mappings"),
            "CGTHUB_LOG_LEVEL": "WARNING",
        }
        log = (self.workdir / "hub.log").open("ab")
        self.proc = subprocess.Popen([str(CGT_HUB), "serve"], env=env, cwd=self.workdir, stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited with {self.proc.returncode}; see {self.workdir / 'hub.log'}")
            try:
                socket.create_connection(("127.0.0.1", self.mllp_port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("hub did not start listening within 60 s")

    def kill(self) -> None:
        with self.lock:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
            self.kills += 1
            self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _messages(run: str) -> list[Item]:
    items = []
    for i in range(TOTAL):
        if i % 10 == 9:
            key, cid = f"K{run}-O{i}", f"K{run}O{i:05d}"
            payload = m.orm(key, f"K{run}-M{i}", cid=cid, accept="AL", app="NE")
            items.append(Item(key, "orm", cid, payload))
        else:
            key, cid = f"K{run}-M{i}", f"K{run}A{i:05d}"
            segs = [
                m.msh("ADT^A04", cid, accept="AL", app="NE"),
                "EVN|A04|20261120101500",
                m.pid(key, family=f"Fam{i}", birth="19700101"),
            ]
            items.append(Item(key, "adt", cid, ("\r".join(segs) + "\r").encode()))
    return items


def _sender(hub: Hub, items: list[Item], stop: threading.Event) -> None:
    sock: socket.socket | None = None
    deframer = Deframer()
    pending: list[bytes] = []
    for item in items:
        while not item.acked and not stop.is_set():
            try:
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", hub.mllp_port), timeout=2)
                    sock.settimeout(60)
                    deframer, pending = Deframer(), []
                sock.sendall(frame(item.payload))
                while True:
                    while not pending:
                        data = sock.recv(65536)
                        if not data:
                            raise ConnectionError("closed")
                        pending += deframer.feed(data)
                    ack = pending.pop(0)
                    if acked_control_id(ack) != item.control_id:
                        item.wrong_acks.append(acked_control_id(ack))
                        continue
                    code = ack_code_of(ack)
                    if code in ("CE",):  # the hub could not commit: send again
                        item.resends += 1
                        break
                    item.acked, item.code = True, code
                    break
            except (OSError, ConnectionError):
                if sock is not None:
                    sock.close()
                sock = None
                item.resends += 1
                time.sleep(0.02)
    if sock is not None:
        sock.close()


def _killer(hub: Hub, done: threading.Event, rng: random.Random) -> None:
    while hub.kills < KILLS and not done.is_set():
        time.sleep(rng.uniform(0.15, 1.2))
        if done.is_set():
            return
        hub.kill()


@pytest.mark.parametrize("db_url", ["sqlite", "postgres"], indirect=True)
def test_kill_and_reconcile(db_url: str, tmp_path: Path) -> None:
    workdir = tmp_path / "hub"
    workdir.mkdir()
    shutil.copytree(REPO / "partner-profiles", workdir / "partner-profiles")
    run = os.urandom(2).hex()
    items = _messages(run)
    hub = Hub(db_url, workdir)
    hub.start()
    done = threading.Event()
    stop = threading.Event()
    started = time.monotonic()
    try:
        killer = threading.Thread(target=_killer, args=(hub, done, random.Random(7)), daemon=True)
        killer.start()
        senders = [
            threading.Thread(target=_sender, args=(hub, items[i::CONNECTIONS], stop), daemon=True)
            for i in range(CONNECTIONS)
        ]
        for t in senders:
            t.start()
        killer.join(timeout=900)  # the kills happen while traffic flows
        for t in senders:
            t.join(timeout=1200)
        done.set()
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        done.set()
        hub.stop()
    assert hub.kills >= KILLS
    report = _reconcile(db_url, items)
    print(
        f"\nkill-and-reconcile on {db_url.split(':')[0]}: {TOTAL} messages, {hub.kills} SIGKILLs, "
        f"{elapsed:.1f} s: {dict(report)}"
    )
    assert report["lost"] == 0, report
    assert report["duplicated"] == 0, report
    assert report["unexpected"] == 0, report
    assert report["acked"] == TOTAL, report
    assert report["recovered"] > 0, report  # the kills did hit messages in flight


def _reconcile(db_url: str, items: list[Item]) -> Counter[str]:
    store: Store = open_store(db_url, check=False)
    try:
        inbox = Counter(
            store.read(
                lambda s: list(s.scalars(select(InboxMessage.external_id).where(InboxMessage.channel == "hl7v2-mllp")))
            )
        )
        orders = Counter(store.read(lambda s: list(s.scalars(select(TherapyOrder.placer_number)))))
        patients = Counter(
            store.read(
                lambda s: list(
                    s.scalars(
                        select(SearchToken.value).where(
                            SearchToken.resource_type == "Patient", SearchToken.param == "identifier"
                        )
                    )
                )
            )
        )
        statuses = Counter(store.read(lambda s: list(s.scalars(select(InboxMessage.status)))))
        total_inbox = store.read(lambda s: s.execute(select(func.count()).select_from(InboxMessage)).scalar_one())
    finally:
        store.dispose()
    report: Counter[str] = Counter({"lost": 0, "recovered": 0, "unexpected": 0, "duplicated": 0})
    sent_ids = {i.control_id for i in items}
    for item in items:
        effects = orders[item.key] if item.kind == "orm" else patients[item.key]
        rows = inbox[item.control_id]
        if item.acked:
            report["acked"] += 1
        if item.acked and (rows == 0 or effects == 0):
            report["lost"] += 1
        elif rows > 1 or effects > 1:
            report["duplicated"] += 1
        elif (item.acked and item.code != "CA") or item.wrong_acks:
            report["unexpected"] += 1
        elif item.resends:
            report["recovered"] += 1
        else:
            report["delivered-first-time"] += 1
    report["unexpected"] += sum(1 for cid in inbox if cid not in sent_ids)
    report["unexpected"] += int(total_inbox) - sum(inbox.values())
    report["not-handled"] = sum(v for k, v in statuses.items() if k != "handled")
    return report
