"""Builders for the HL7 v2 messages the tests send (St Mary's dialect unless told otherwise)."""

from __future__ import annotations

import itertools

_ids = itertools.count(1)
MRN_AA = "STMARYS&2.16.840.1.113883.3.8998.1&ISO"


def control_id(prefix: str = "T") -> str:
    return f"{prefix}{next(_ids):08d}"


def msh(
    mtype: str,
    cid: str,
    *,
    facility: str = "STMARYS",
    version: str = "2.5.1",
    accept: str = "",
    app: str = "",
    charset: str = "",
    ts: str = "20261125101500",
) -> str:
    code, trigger = mtype.split("^")
    return (
        f"MSH|^~\\&|EPIC|{facility}|CGTHUB|CGTHUB|{ts}||{mtype}^{code}_{trigger}|{cid}|P|{version}"
        f"|||{accept}|{app}|USA|{charset}"
    )


def pid(mrn: str, family: str = "Rivera", given: str = "Ana", birth: str = "19710309", sex: str = "F") -> str:
    return f"PID|1||{mrn}^^^{MRN_AA}^MR||{family}^{given}^^^^^L||{birth}|{sex}|||12 Elm St^^Rochester^NY^14620^USA^H"


def orm(
    placer: str,
    mrn: str,
    *,
    control: str = "NW",
    product: str = "CART19F",
    cid: str | None = None,
    zct: str | None = None,
    family: str = "Rivera",
    birth: str = "19710309",
    mtype: str = "ORM^O01",
    accept: str = "",
    app: str = "",
    reason: str = "",
) -> bytes:
    segs = [
        msh(mtype, cid or control_id("ORM"), accept=accept, app=app),
        pid(mrn, family=family, birth=birth),
        "PV1|1|O|CTU^01^^STMARYS",
        f"ORC|{control}|{placer}^STMARYS||||||||||1234567893^Okafor^Chidi^^^Dr^^^NPI||||{reason}",
    ]
    if mtype == "OML^O21":
        segs.append("TQ1|1||||||20261201080000-0500||R")
    segs.append(f"OBR|1|{placer}^STMARYS||{product}^Autologous CAR-T^L|||20261120100000-0500")
    if zct is not None:
        segs.append(zct)
    segs.append("NTE|1||Conditioning planned after collection")
    segs.append("DG1|1||C83.30^Diffuse large B-cell lymphoma^I10")
    return ("\r".join(segs) + "\r").encode()


def adt(
    mrn: str,
    trigger: str = "A04",
    *,
    family: str = "Rivera",
    given: str = "Ana",
    birth: str = "19710309",
    cid: str | None = None,
    sex: str = "F",
) -> bytes:
    segs = [
        msh(f"ADT^{trigger}", cid or control_id("ADT")),
        f"EVN|{trigger}|20261125101500",
        pid(mrn, family=family, given=given, birth=birth, sex=sex),
        "PV1|1|O|CTU^01^^STMARYS",
    ]
    return ("\r".join(segs) + "\r").encode()


def siu(
    trigger: str,
    appointment: str,
    order_ref: str,
    mrn: str,
    *,
    start: str = "20261203080000-0500",
    cid: str | None = None,
) -> bytes:
    segs = [
        msh(f"SIU^{trigger}", cid or control_id("SIU")),
        f"SCH|{appointment}^STMARYS|||||APH^Apheresis|||120|min|^^120^{start}^|||||||||||||||{order_ref}^STMARYS",
        pid(mrn),
        "RGS|1",
        f"AIS|1||APH^Apheresis collection^L|{start}|||180|min",
        "AIL|1||APH^02^^STMARYS",
    ]
    return ("\r".join(segs) + "\r").encode()


def oru(
    coi: str,
    results: list[tuple[str, str, str]],
    *,
    mrn: str | None = None,
    status: str = "F",
    cid: str | None = None,
    facility: str = "LAKESIDELAB",
) -> bytes:
    segs = [msh("ORU^R01", cid or control_id("ORU"), facility=facility)]
    if mrn:
        segs.append(pid(mrn))
    segs.append(f"OBR|1||{coi}^CGTHUB|RELEASE^Release panel^L|||20261120090000-0500")
    for i, (code, value, unit) in enumerate(results, 1):
        segs.append(f"OBX|{i}|NM|{code}^{code}^L||{value}|{unit}|||||{status}|||20261120090000-0500")
    return ("\r".join(segs) + "\r").encode()
