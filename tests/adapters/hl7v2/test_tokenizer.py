from __future__ import annotations

import time

import pytest

from adapters.hl7v2.tokenizer import Encoding, ParseError, decode, escape, parse, parse_all, unescape
from tests.adapters.hl7v2.conftest import CORPUS

ORM = (
    "MSH|^~\\&|EPIC|STMARYS|CGTHUB|CGTHUB|20261125101500||ORM^O01^ORM_O01|C1|P|2.5.1\r"
    "PID|1||MRN1^^^STMARYS^MR~X9^^^OTHER^PI||Rivera^Ana||19710309|F\r"
    "ORC|NW|PL1^STMARYS\r"
    "OBR|1|PL1^STMARYS||CART19F^CAR-T^L\r"
    "ZCT|CART19F|LEIDEN\r"
)


def test_fields_components_repetitions_and_z_segments() -> None:
    msg = parse(ORM.encode())
    assert msg.message_type == "ORM^O01"
    assert msg.structure == "ORM_O01"
    assert msg.control_id == "C1"
    assert msg.version == "2.5.1"
    pid = msg.segment("PID")
    assert pid is not None
    reps = msg.repetitions(pid[3])
    assert [msg.components(r)[0] for r in reps] == ["MRN1", "X9"]
    assert msg.segment("ZCT") == ["ZCT", "CART19F", "LEIDEN"]  # Z-segments are kept for the mappings
    assert msg.msh(1) == "|"
    assert msg.msh(2) == "^~\\&"


@pytest.mark.parametrize("end", ["\r", "\n", "\r\n"])
def test_segment_ends(end: str) -> None:
    msg = parse(ORM.replace("\r", end).encode())
    assert [s[0] for s in msg.segments] == ["MSH", "PID", "ORC", "OBR", "ZCT"]


def test_mixed_segment_ends_blank_lines_and_bom() -> None:
    text = "\ufeff" + ORM.replace("\rPID", "\r\nPID").replace("\rORC", "\n\nORC")
    msg = parse(text.encode("utf-8"))
    assert [s[0] for s in msg.segments] == ["MSH", "PID", "ORC", "OBR", "ZCT"]
    assert "utf-8 byte-order mark stripped" in msg.notes


def test_encoding_by_msh18_with_fallback() -> None:
    latin = ORM.replace("2.5.1\r", "2.5.1||||||8859/1\r").replace("Rivera", "Müller").encode("latin-1")
    msg = parse(latin)
    assert msg.charset == "latin-1"
    assert msg.first_leaf(msg.segments[1][5]) == "Müller"
    utf8 = ORM.replace("2.5.1\r", "2.5.1||||||UNICODE UTF-8\r").replace("Rivera", "Ørsted").encode("utf-8")
    assert parse(utf8).first_leaf(parse(utf8).segments[1][5]) == "Ørsted"
    # Declared ASCII but the bytes are UTF-8: decoded safely instead of failing.
    lying = ORM.replace("2.5.1\r", "2.5.1||||||ASCII\r").replace("Rivera", "Ørsted").encode("utf-8")
    msg = parse(lying)
    assert msg.charset == "utf-8"
    assert any("fallback" in n for n in msg.notes)
    # No MSH-18 and not UTF-8: Windows-1252.
    cp = ORM.replace("Rivera", "Gonzále€").encode("cp1252")
    assert parse(cp).first_leaf(parse(cp).segments[1][5]) == "Gonzále€"
    text, codec, _ = decode(b"MSH|^~\\&|A\xff\xfe")
    assert codec in ("cp1252", "latin-1")
    assert text.startswith("MSH")


def test_custom_encoding_characters_and_escapes() -> None:
    custom = "MSH#@$!*#A#B#C#D#20260101##ADT@A04#X1#P#2.3\rPID#1##123@@@AA!X*Y@MR##Smith!F!!S!!T!!R!!E!@Bob\r"
    msg = parse(custom.encode())
    assert msg.enc == Encoding("#", "@", "$", "!", "*", "")
    assert msg.message_type == "ADT^A04"
    pid = msg.segment("PID")
    assert pid is not None
    assert msg.components(pid[3])[3] == "AA!X*Y"
    assert msg.subcomponents(msg.components(pid[3])[3]) == ["AA!X", "Y"]
    assert msg.text(msg.components(pid[5])[0]) == "Smith#@*$!"


def test_truncation_character_and_identity_read_encoding() -> None:
    msg = parse(b"MSH|^~\\&#|A|B|C|D|20260101||ADT^A04|X2|P|2.7\rPID|1||9\\P\\9\r")
    assert msg.enc.truncation == "#"
    assert msg.text(msg.segments[1][3]) == "9#9"
    three = parse(b"MSH|^~&|A|B|C|D|20260101||ORU^R01|X3|P|2.5.1\rPID|1||1^^^AA&1.2&ISO\r")
    assert three.enc.subcomponent == "&"
    assert three.enc.escape == ""
    assert three.message_type == "ORU^R01"
    swapped = parse(b"MSH|^\\&|A|B|C|D|20260101||ADT^A01|X4|D|2.3\r")
    assert swapped.enc.escape == "\\"
    assert swapped.enc.subcomponent == "&"


def test_unescape_every_sequence() -> None:
    enc = Encoding()
    assert unescape("a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f", enc) == "a|b^c&d~e\\f"
    assert unescape("line1\\.br\\line2", enc) == "line1\nline2"
    assert unescape("x\\X0D0A\\y", enc) == "x\r\ny"
    assert unescape("\\H\\bold\\N\\", enc) == "bold"
    assert unescape("odd \\ alone", enc) == "odd \\ alone"
    assert unescape("\\Q\\", enc) == "\\Q\\"
    assert unescape(escape("a|b^c&d~e\\f\rg", enc), enc) == "a|b^c&d~e\\f\rg"


def test_batches_split_into_messages() -> None:
    batch = (
        "FHS|^~\\&|A|B\rBHS|^~\\&|A|B|||||||B1\r"
        "MSH|^~\\&|A|B|C|D|20260101||ADT^A04|M1|P|2.5\rPID|1||1\r"
        "MSH|^~\\&|A|B|C|D|20260101||ADT^A04|M2|P|2.5\rPID|1||2\r"
        "BTS|2\rFTS|1\r"
    )
    tx = parse_all(batch.encode())
    assert tx.batch
    assert [m.control_id for m in tx.messages] == ["M1", "M2"]
    assert tx.batch_header is not None
    assert tx.batch_header[11] == "B1"
    assert tx.messages[1].raw.startswith(b"MSH|^~\\&|A|B|C|D|20260101||ADT^A04|M2")


def test_not_hl7() -> None:
    for junk in (b"", b"hello", b"MSH", b"MSH|", b"MSHa^~\\&"):
        with pytest.raises(ParseError):
            parse(junk)


def test_every_corpus_file_tokenizes() -> None:
    files = [p for p in sorted(CORPUS.rglob("*")) if p.is_file()]
    assert len(files) > 200
    messages = 0
    for path in files:
        data = path.read_bytes()
        try:
            tx = parse_all(data)
        except ParseError:
            assert not data.strip(), path  # only the empty file is not a message
            continue
        for msg in tx.messages:
            messages += 1
            assert msg.segments[0][0] == "MSH"
            assert msg.message_type, path
    assert messages > 200


def test_hot_path_is_fast() -> None:
    """The measured figure is in bench/README.md; this only guards against a 10× regression."""
    data = (CORPUS / "ms-fhir-converter" / "ORM-O01-01.hl7").read_bytes()
    parse(data)
    n = 2000
    started = time.perf_counter()
    for _ in range(n):
        parse(data)
    per = (time.perf_counter() - started) / n
    assert per < 0.002, f"{per * 1000:.3f} ms per message"
