"""MLLP ingest: the hub's durable end-to-end ingest against a bare python-hl7 server, same run.

    .venv/bin/python bench/mllp_ingest.py                 # SQLite + PostgreSQL, 20,000 messages each
    .venv/bin/python bench/mllp_ingest.py --memory 100000 # + RSS over 100,000 messages (SQLite)

* **Baseline**: python-hl7's asyncio MLLP server (``hl7.mllp.start_hl7_server``) that parses each
  message (``hl7.parse``) and answers ``create_ack()`` — no storage at all — in its own process.
* **Hub**: ``cgt-hub serve`` in its own process (API, relay and consumers idle; the MLLP listener
  works): every message is stored in the inbox, mapped, the patient registered through the core
  (FHIR validation, search indexes, hash-chained audit) and COMMITTED (SQLite ``synchronous=FULL``
  / PostgreSQL ``synchronous_commit=on``) before the ACK.
* **Client**: the same for both: 8 connections, each sends the next message when the previous one
  is acknowledged; the ACK latency of every message is kept. Messages: ADT^A04 (registration of a
  new patient, the most common HL7 v2 traffic), 6 segments, unique MRNs.
* **Hot path**: parse time of a 15-segment ORM^O01 (Microsoft FHIR-Converter sample) with the hub's
  tokenizer, python-hl7 and hl7apy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.hl7v2.framer import Deframer, frame
from adapters.hl7v2.tokenizer import parse
from bench._common import REPO, fresh_database, machine, percentile
from tests.conftest import CORPORA

CONNECTIONS = 8
ORM_SAMPLE = CORPORA / "hl7v2" / "ms-fhir-converter" / "ORM-O01-01.hl7"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def messages(n: int, run: str) -> list[bytes]:
    out = []
    for i in range(n):
        segs = [
            f"MSH|^~\\&|EPIC|STMARYS|CGTHUB|CGTHUB|20261120101500||ADT^A04^ADT_A01|B{run}{i:07d}|P|2.5.1",
            "EVN|A04|20261120101500",
            f"PID|1||B{run}-{i}^^^STMARYS&2.16.840.1.113883.3.8998.1&ISO^MR||Fam{i % 997}^Given^^^^^L||19700101|F|||"
            "12 Elm St^^Rochester^NY^14620^USA^H||^PRN^PH^^^585^5550100",
            "PV1|1|O|CTU^01^^STMARYS|||||||||||||||V{i}",
            "NK1|1|Fam^Kin|SPO",
            "AL1|1|DA|PCN^Penicillin^L",
        ]
        out.append(("\r".join(segs) + "\r").encode())
    return out


# --------------------------------------------------------------------------- servers
BASELINE = """
import asyncio, sys
import hl7.mllp

async def handle(reader, writer):
    try:
        while not writer.is_closing():
            message = await reader.readmessage()        # hl7.parse inside
            writer.writemessage(message.create_ack())
            await writer.drain()
    except asyncio.IncompleteReadError:
        pass
    finally:
        writer.close()

async def main(port):
    server = await hl7.mllp.start_hl7_server(handle, "127.0.0.1", port, encoding="utf-8")
    async with server:
        await server.serve_forever()

asyncio.run(main(int(sys.argv[1])))
"""


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not listen")


def start_baseline(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", BASELINE, str(port)], stdout=subprocess.DEVNULL)
    wait_port(port, proc)
    return proc


def start_hub(url: str, port: int, workdir: Path, workers: int = 1) -> subprocess.Popen[bytes]:
    profiles = workdir / "partner-profiles"
    shutil.copytree(REPO / "partner-profiles", profiles, dirs_exist_ok=True)
    path = profiles / "st-marys.yaml"
    data = yaml.safe_load(path.read_text())
    for channel in data["channels"]:
        if channel["adapter"] == "hl7v2-mllp" and channel["direction"] == "inbound":
            channel["ack_mode"] = "original"  # answer AA like the baseline
    path.write_text(yaml.safe_dump(data))
    env = {
        **os.environ,
        "CGTHUB_DATABASE_URL": url,
        "CGTHUB_MLLP_PORT": str(port),
        "CGTHUB_HTTP_PORT": str(free_port()),
        "CGTHUB_PROFILES_DIR": str(profiles),
        "CGTHUB_MAPPINGS_DIR": str(REPO / "mappings"),
        "CGTHUB_LOG_LEVEL": "WARNING",
    }
    cgt_hub = Path(sys.executable).parent / "cgt-hub"
    command = [str(cgt_hub), "serve", "--workers", str(workers)]
    proc = subprocess.Popen(command, env=env, cwd=workdir, stdout=subprocess.DEVNULL)
    wait_port(port, proc)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


# --------------------------------------------------------------------------- the client
async def feed(port: int, payloads: list[bytes], pid: int | None = None) -> tuple[float, list[float], list[float]]:
    """Send everything over CONNECTIONS connections; (seconds, latencies in ms, RSS samples in MB)."""
    latencies: list[float] = []
    rss: list[float] = []
    queue = list(reversed(payloads))
    done = 0
    total = len(payloads)

    async def one() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        deframer = Deframer()
        pending: list[bytes] = []
        while queue:
            payload = queue.pop()
            sent = time.perf_counter()
            writer.write(frame(payload))
            await writer.drain()
            while not pending:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("server closed the connection")
                pending += deframer.feed(data)
            ack = pending.pop(0)
            if b"MSA|AA|" not in ack:
                raise RuntimeError(f"not an AA: {ack[:200]!r}")
            latencies.append((time.perf_counter() - sent) * 1000)
            done += 1
            if pid is not None and done % max(1, total // 20) == 0:
                rss.append(rss_mb(pid))
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(CONNECTIONS)))
    return time.perf_counter() - started, latencies, rss


# --------------------------------------------------------------------------- runs
def parse_times() -> None:
    import hl7
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message

    data = ORM_SAMPLE.read_bytes()
    text = data.decode("utf-8-sig").replace("\r\n", "\r").replace("\n", "\r").strip("\r")
    segments = len(parse(data).segments)

    def per_call(fn: object, n: int) -> float:
        assert callable(fn)
        fn()
        runs = []
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(n):
                fn()
            runs.append((time.perf_counter() - t) / n)
        return statistics.median(runs) * 1000

    lean = per_call(lambda: parse(data), 2000)
    py_hl7 = per_call(lambda: hl7.parse(text), 100)
    apy = per_call(lambda: parse_message(text, validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=True), 5)
    print(f"\nHot-path parse of a {segments}-segment ORM^O01 ({ORM_SAMPLE.name}, {len(data)} bytes), median ms:")
    print(f"  hub tokenizer (adapters/hl7v2/tokenizer.py)  {lean:8.4f} ms")
    print(f"  python-hl7 hl7.parse                          {py_hl7:8.4f} ms   ({py_hl7 / lean:,.0f}× slower)")
    print(f"  hl7apy parse_message (tolerant)               {apy:8.4f} ms   ({apy / lean:,.0f}× slower)")


def throughput(kind: str, n: int, run: str, workers: int = 1) -> None:
    payloads = messages(n, run)
    port = free_port()
    base = start_baseline(port)
    try:
        asyncio.run(feed(port, messages(200, run + "w")))  # warm-up
        b_secs, b_lat, _ = asyncio.run(feed(port, payloads))
    finally:
        stop(base)
    with fresh_database(kind) as url, tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        hub = start_hub(url, port, Path(tmp), workers)
        try:
            asyncio.run(feed(port, messages(200, run + "w")))
            if workers > 1:  # the parent's socket accepts before every worker is up
                time.sleep(5)
                asyncio.run(feed(port, messages(200 * workers, run + "v")))
            h_secs, h_lat, rss = asyncio.run(feed(port, payloads, hub.pid))
        finally:
            stop(hub)
    b_rate, h_rate = n / b_secs, n / h_secs
    print(f"\n{kind}: {n:,} ADT^A04 over {CONNECTIONS} connections, hub: {workers} process(es)")
    print(f"  {'':<44} {'msg/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    print(
        f"  {'baseline: python-hl7 server, parse + ACK':<44} {b_rate:>8,.0f} "
        f"{percentile(b_lat, 50):>8.2f} {percentile(b_lat, 99):>8.2f}"
    )
    print(
        f"  {'hub: stored + mapped + committed, then ACK':<44} {h_rate:>8,.0f} "
        f"{percentile(h_lat, 50):>8.2f} {percentile(h_lat, 99):>8.2f}"
    )
    memory = f"hub RSS {min(rss):.0f}–{max(rss):.0f} MB" if workers == 1 else "(RSS: one process only)"
    print(f"  ratio hub / baseline: {h_rate / b_rate:.2f}×   {memory}")


def memory(n: int, run: str) -> None:
    with fresh_database("sqlite") as url, tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        hub = start_hub(url, port, Path(tmp))
        try:
            secs, lat, rss = asyncio.run(feed(port, messages(n, run), hub.pid))
        finally:
            stop(hub)
    tenth = max(1, len(rss) // 10)
    early, late = statistics.median(rss[tenth : 2 * tenth]), statistics.median(rss[-tenth:])
    print(f"\nMemory over {n:,} messages (SQLite): RSS sampled every {n // 20:,} messages (MB):")
    print("  " + " ".join(f"{r:.0f}" for r in rss))
    print(
        f"  after 10–20%: {early:.0f} MB, last 10%: {late:.0f} MB, growth {late - early:+.0f} MB; "
        f"{n / secs:,.0f} msg/s, p99 {percentile(lat, 99):.1f} ms"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--memory", type=int, default=0, help="also measure RSS over this many messages (SQLite)")
    ap.add_argument(
        "--workers", type=int, default=1, help="`cgt-hub serve --workers` for the PostgreSQL run (SQLite: always 1)"
    )
    args = ap.parse_args()
    print(f"MLLP ingest — {machine()}")
    run = os.urandom(2).hex()
    parse_times()
    for kind in args.backends.split(","):
        kind = kind.strip()
        throughput(kind, args.messages, run + kind[:1], args.workers if kind == "postgres" else 1)
    if args.memory:
        memory(args.memory, run + "m")


if __name__ == "__main__":
    main()
