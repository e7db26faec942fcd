"""python-hl7's own command-line client, unmodified, against the running listener."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sqlalchemy import select

from adapters.hl7v2.listener import MllpListener
from hub.db.models import InboxMessage
from hub.db.uow import Store
from tests.adapters.hl7v2 import messages as m

MLLP_SEND = Path(sys.executable).parent / "mllp_send"


def test_mllp_send_loose_file(listener: MllpListener, store: Store, tmp_path: Path) -> None:
    msgs = [m.adt(f"MRN-S{i}").replace(b"\r", b"\n") for i in range(3)]
    path = tmp_path / "three.hl7"
    path.write_bytes(b"".join(msgs))
    out = subprocess.run(
        [str(MLLP_SEND), "--loose", "-p", str(listener.port), "-f", str(path), "127.0.0.1"],
        capture_output=True,
        timeout=60,
        check=True,
    )
    acks = [line for line in out.stdout.split(b"\r") if line.startswith(b"MSA")]
    assert [a.split(b"|")[1] for a in acks] == [b"CA", b"CA", b"CA"]
    rows = store.read(lambda s: list(s.scalars(select(InboxMessage.status))))
    assert rows == ["handled"] * 3


def test_mllp_send_framed_file(listener: MllpListener, store: Store, tmp_path: Path) -> None:
    # (from stdin mllp_send 0.4.5 reads text on Python 3 and fails before connecting; -f reads bytes)
    path = tmp_path / "framed.mllp"
    path.write_bytes(
        b"".join(b"\x0b" + m.oru("CHA999826000123", [("LRL-VIAB", "90", "%")]) + b"\x1c\r" for _ in range(2))
    )
    out = subprocess.run(
        [str(MLLP_SEND), "-p", str(listener.port), "-f", str(path), "127.0.0.1"],
        capture_output=True,
        timeout=60,
        check=True,
    )
    acks = [line for line in out.stdout.split(b"\r") if line.startswith(b"MSA")]
    assert [a.split(b"|")[1] for a in acks] == [b"AE", b"AE"]  # Lakeside (original mode); no such order


def test_the_readme_example_order_is_accepted(listener: MllpListener, store: Store) -> None:
    """conformance/examples/orm-o01.hl7, sent as the README says: a commit ACK, then the
    application ACK; the order is placed."""
    from hub.db.models import TherapyOrder

    example = Path(__file__).resolve().parents[3] / "conformance" / "examples" / "orm-o01.hl7"
    out = subprocess.run(
        [str(MLLP_SEND), "--loose", "-p", str(listener.port), "-f", str(example), "127.0.0.1"],
        capture_output=True,
        timeout=60,
        check=True,
    )
    acks = [line.split(b"|")[1] for line in out.stdout.split(b"\r") if line.startswith(b"MSA")]
    assert acks[0] == b"CA"
    placed = store.read(lambda s: list(s.scalars(select(TherapyOrder.placer_number))))
    assert placed == ["EXAMPLE-ORDER-1"]
