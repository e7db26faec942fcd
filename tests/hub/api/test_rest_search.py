"""FHIR R4 search semantics a hospital's client relies on: token forms (``|code``, ``system|``,
comma OR), date precision with prefixes, ``_count=0``, ``Prefer: handling``, search by POST, the
UTF-8 charset on every answer, and conditional read (304)."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.hub.api.conftest import ClientKey, bearer

SYSTEM = "urn:test:spec-loc"


def _location(name: str, value: str, system: str | None = SYSTEM, status: str = "active") -> dict[str, Any]:
    ident: dict[str, Any] = {"value": value}
    if system is not None:
        ident["system"] = system
    return {"resourceType": "Location", "name": name, "status": status, "identifier": [ident]}


def _names(api: TestClient, h: dict[str, str], params: dict[str, str]) -> list[str]:
    r = api.get("/fhir/Location", params=params, headers=h)
    assert r.status_code == 200, r.text
    return sorted(e["resource"]["name"] for e in r.json()["entry"])


def test_token_forms_follow_the_spec(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    h = bearer(api, client_keys["st-marys"])
    for body in (
        _location("with-system", "T-1"),
        _location("no-system", "T-1", system=None),
        _location("other-code", "T-2", status="inactive"),
    ):
        assert api.post("/fhir/Location", json=body, headers=h).status_code == 201
    # |code: only identifiers without a system (not the same value under another system)
    assert _names(api, h, {"identifier": "|T-1"}) == ["no-system"]
    # system|: every identifier of that system, whatever its value
    assert _names(api, h, {"identifier": f"{SYSTEM}|"}) == ["other-code", "with-system"]
    assert _names(api, h, {"identifier": f"{SYSTEM}|T-1"}) == ["with-system"]
    assert _names(api, h, {"identifier": "T-1"}) == ["no-system", "with-system"]
    # a comma is OR
    assert _names(api, h, {"identifier": f"{SYSTEM}|T-1,{SYSTEM}|T-2"}) == ["other-code", "with-system"]
    assert _names(api, h, {"status": "active,inactive", "identifier": f"{SYSTEM}|"}) == ["other-code", "with-system"]


def test_dates_are_ranges_by_precision(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    h = bearer(api, client_keys["st-marys"])
    made = api.post("/fhir/Location", json=_location("dated", "D-1"), headers=h).json()
    day = made["meta"]["lastUpdated"][:10]  # e.g. 2026-12-03
    year, month = day[:4], day[:7]
    only = {"identifier": f"{SYSTEM}|D-1"}
    for value in (year, f"eq{year}", month, day, f"eq{day}", f"le{day}", f"ge{day}", f"lt{int(year) + 1}"):
        assert _names(api, h, {**only, "_lastUpdated": value}) == ["dated"], value
    for value in (f"gt{day}", f"lt{day}", f"gt{year}", f"ne{day}", f"eq{int(year) - 1}"):
        assert _names(api, h, {**only, "_lastUpdated": value}) == [], value
    stamp = made["meta"]["lastUpdated"]
    assert _names(api, h, {**only, "_lastUpdated": f"eq{stamp}"}) == ["dated"]


def test_count_zero_gives_the_total_and_no_endless_next_link(
    api: TestClient, client_keys: dict[str, ClientKey]
) -> None:
    h = bearer(api, client_keys["st-marys"])
    for i in range(3):
        api.post("/fhir/Location", json=_location(f"c{i}", "C-0"), headers=h)
    page = api.get("/fhir/Location", params={"identifier": f"{SYSTEM}|C-0", "_count": "0"}, headers=h).json()
    assert page["entry"] == []
    assert page["total"] == 3
    assert [link["relation"] for link in page["link"]] == ["self"]


def test_prefer_handling(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    h = bearer(api, client_keys["st-marys"])
    api.post("/fhir/Location", json=_location("lenient", "L-1"), headers=h)
    params = {"identifier": f"{SYSTEM}|L-1", "_sort": "name"}
    strict = api.get("/fhir/Location", params=params, headers={**h, "Prefer": "handling=strict"})
    assert strict.status_code == 422
    assert strict.json()["resourceType"] == "OperationOutcome"
    assert api.get("/fhir/Location", params=params, headers=h).status_code == 422  # strict is the default
    lenient = api.get("/fhir/Location", params=params, headers={**h, "Prefer": "handling=lenient"})
    assert lenient.status_code == 200
    bundle = lenient.json()
    assert [e["resource"]["name"] for e in bundle["entry"]] == ["lenient"]
    assert "_sort" not in bundle["link"][0]["url"]  # the self link shows what was applied


def test_search_by_post(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    h = bearer(api, client_keys["st-marys"])
    for i in range(3):
        api.post("/fhir/Location", json=_location(f"p{i}", "P-1"), headers=h)
    r = api.post("/fhir/Location/_search", data={"identifier": f"{SYSTEM}|P-1", "_count": "2"}, headers=h)
    assert r.status_code == 200, r.text
    page = r.json()
    assert page["type"] == "searchset"
    assert len(page["entry"]) == 2
    nxt = next(link["url"] for link in page["link"] if link["relation"] == "next")
    rest = api.get(nxt, headers=h).json()
    assert len(rest["entry"]) == 1
    names = {e["resource"]["name"] for e in page["entry"] + rest["entry"]}
    assert names == {"p0", "p1", "p2"}
    as_json = api.post("/fhir/Location/_search", json={"identifier": "x"}, headers=h)
    assert as_json.status_code == 415
    assert as_json.json()["resourceType"] == "OperationOutcome"
    unknown = api.post("/fhir/Location/_search", data={"colour": "red"}, headers=h)
    assert unknown.status_code == 422


def test_answers_name_utf8(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    h = bearer(api, client_keys["st-marys"])
    made = api.post("/fhir/Location", json=_location("Zürich Apherese", "U-1"), headers=h)
    rid = made.json()["id"]
    answers = [
        made,
        api.get(f"/fhir/Location/{rid}", headers=h),
        api.get("/fhir/Location", params={"identifier": f"{SYSTEM}|U-1"}, headers=h),
        api.get("/fhir/metadata"),
        api.get("/fhir/Location/missing", headers=h),  # OperationOutcome from a HubError
        api.delete(f"/fhir/Location/{rid}", headers=h),  # OperationOutcome from the router (405)
    ]
    for r in answers:
        assert r.headers["content-type"] == "application/fhir+json; charset=utf-8", (r.status_code, r.headers)


def test_conditional_read(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    h = bearer(api, client_keys["st-marys"])
    made = api.post("/fhir/Location", json=_location("cached", "R-1"), headers=h)
    rid, etag, modified = made.json()["id"], made.headers["etag"], made.headers["last-modified"]
    same = api.get(f"/fhir/Location/{rid}", headers={**h, "If-None-Match": etag})
    assert same.status_code == 304
    assert same.content == b""
    assert same.headers["etag"] == etag
    assert api.get(f"/fhir/Location/{rid}", headers={**h, "If-Modified-Since": modified}).status_code == 304
    old = "Mon, 01 Jan 2001 00:00:00 GMT"
    assert api.get(f"/fhir/Location/{rid}", headers={**h, "If-Modified-Since": old}).status_code == 200
    changed = api.put(f"/fhir/Location/{rid}", json={**made.json(), "name": "renamed"}, headers=h)
    assert changed.status_code == 200
    fresh = api.get(f"/fhir/Location/{rid}", headers={**h, "If-None-Match": etag})
    assert fresh.status_code == 200
    assert fresh.json()["name"] == "renamed"
    cs = api.get("/fhir/metadata").json()
    location = next(r for r in cs["rest"][0]["resource"] if r["type"] == "Location")
    assert location["conditionalRead"] == "full-support"


def test_history_count_zero_has_no_endless_next_link(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    h = bearer(api, client_keys["st-marys"])
    api.post("/fhir/Location", json=_location("h", "H-0"), headers=h)
    page = api.get("/fhir/Location/_history", params={"_count": "0"}, headers=h).json()
    assert page["type"] == "history"
    assert page["entry"] == []
    assert "link" not in page or all(link["relation"] != "next" for link in page["link"])


def test_format_overrides_accept(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    h = bearer(api, client_keys["st-marys"])
    r = api.get("/fhir/Location", params={"_format": "json"}, headers={**h, "Accept": "application/fhir+xml"})
    assert r.status_code == 200
    assert r.json()["resourceType"] == "Bundle"
    xml = api.get("/fhir/Location", params={"_format": "xml"}, headers={**h, "Accept": "application/fhir+json"})
    assert xml.status_code == 406


def test_refused_token_names_the_bearer_scheme(api: TestClient) -> None:
    for headers in ({}, {"Authorization": "Bearer not-a-token"}):
        r = api.get("/fhir/Location", headers=headers)
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json()["resourceType"] == "OperationOutcome"


def test_instance_history_pages_and_filters(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    """``GET Location/<id>/_history?_count=2`` answered every version and no next link, and
    ``_since``/``_at`` were silently ignored: a client paging a long history got it all at once,
    and one asking what changed since yesterday got the whole story."""
    h = bearer(api, client_keys["st-marys"])
    made = api.post("/fhir/Location", json=_location("v1", "HI-1"), headers=h).json()
    rid = made["id"]
    stamps = [made["meta"]["lastUpdated"]]
    for n in range(2, 6):
        body = {**made, "name": f"v{n}"}
        updated = api.put(f"/fhir/Location/{rid}", json=body, headers=h).json()
        stamps.append(updated["meta"]["lastUpdated"])
    url = f"/fhir/Location/{rid}/_history"
    page = api.get(url, params={"_count": "2"}, headers=h).json()
    seen = [e["resource"]["name"] for e in page["entry"]]
    assert seen == ["v5", "v4"]
    while any(link["relation"] == "next" for link in page.get("link", [])):
        nxt = next(link["url"] for link in page["link"] if link["relation"] == "next")
        assert f"/Location/{rid}/_history?" in nxt
        page = api.get(nxt, headers=h).json()
        assert len(page["entry"]) <= 2
        seen += [e["resource"]["name"] for e in page["entry"]]
    assert seen == ["v5", "v4", "v3", "v2", "v1"]

    since = api.get(url, params={"_since": stamps[3]}, headers=h).json()
    assert [e["resource"]["name"] for e in since["entry"]] == ["v5", "v4"]
    # _at: the version current at that instant (v3 was written at stamps[2], replaced at stamps[3])
    at = api.get(url, params={"_at": stamps[2]}, headers=h).json()
    assert "v3" in [e["resource"]["name"] for e in at["entry"]]
    assert "v1" not in [e["resource"]["name"] for e in at["entry"]]
    empty = api.get(url, params={"_since": "2999-01-01T00:00:00Z"}, headers=h)
    assert empty.status_code == 200
    assert empty.json()["entry"] == []
    assert api.get(url, params={"_count": "0"}, headers=h).status_code == 200

    bad = api.get(url, params={"_since": "yesterday"}, headers=h)
    assert bad.status_code == 422
    assert bad.json()["resourceType"] == "OperationOutcome"
    strict = api.get(url, params={"_sort": "x"}, headers={**h, "Prefer": "handling=strict"})
    assert strict.status_code == 422
    lenient = api.get(url, params={"_sort": "x"}, headers={**h, "Prefer": "handling=lenient"})
    assert lenient.status_code == 200
    assert len(lenient.json()["entry"]) == 5
    assert api.get(f"/fhir/Location/{rid}-nothere/_history", headers=h).status_code == 404


def test_history_request_urls_follow_r4(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    """A create's history entry said ``request.url: Location/<id>``; R4 says the url of the
    request that made the version, which for a create is ``Location`` (POST [type])."""
    h = bearer(api, client_keys["st-marys"])
    made = api.post("/fhir/Location", json=_location("u1", "HU-1"), headers=h).json()
    api.put(f"/fhir/Location/{made['id']}", json={**made, "name": "u2"}, headers=h)
    hist = api.get(f"/fhir/Location/{made['id']}/_history", headers=h).json()
    requests = [e["request"] for e in hist["entry"]]
    assert requests == [
        {"method": "PUT", "url": f"Location/{made['id']}"},
        {"method": "POST", "url": "Location"},
    ]


def _observation(code: str, effective: str) -> dict[str, Any]:
    coding = {"system": "urn:test:dates", "code": code}
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [coding]},
        "effectiveDateTime": effective,
    }


def test_a_stored_partial_date_is_a_range(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    """An Observation dated ``2026-12`` was indexed as 2026-12-01T00:00: ``date=ge2026-12-15``
    and ``gt2026-12-15`` missed it (the month reaches past the 15th) and ``eq2026-12-01`` found it
    (the day does not contain the month). R4: a stored date is the range its precision implies,
    and the prefixes compare the ranges (eq: the search range contains the stored one)."""
    h = bearer(api, client_keys["st-marys"])
    assert api.post("/fhir/Observation", json=_observation("MONTH", "2026-12"), headers=h).status_code == 201
    second = _observation("SECOND", "2026-12-15T10:00:00+01:00")
    assert api.post("/fhir/Observation", json=second, headers=h).status_code == 201

    def found(code: str, value: str) -> bool:
        r = api.get("/fhir/Observation", params={"code": f"urn:test:dates|{code}", "date": value}, headers=h)
        assert r.status_code == 200, r.text
        return len(r.json()["entry"]) == 1

    matches = ["2026-12", "2026", "ge2026-12-15", "gt2026-12-15", "le2026-12-15", "lt2026-12-15"]
    matches += ["sa2026-11", "eb2027-01", "ne2026-12-15", "le2026-12", "ge2026-12"]
    for value in matches:
        assert found("MONTH", value), value
    for value in (
        "eq2026-12-15",
        "eq2026-12-01",
        "gt2026-12",
        "lt2026-12",
        "eb2026-12-31",
        "sa2026-12-01",
        "ne2026-12",
    ):
        assert not found("MONTH", value), value
    # a stored second is that second (09:00:00Z)
    for value in ("2026-12-15", "eq2026-12-15T09:00:00Z", "ge2026-12-15T09:00:00Z", "le2026-12-15T09:00:00Z"):
        assert found("SECOND", value), value
    for value in ("gt2026-12-15T09:00:00Z", "lt2026-12-15T09:00:00Z", "eq2026-12-16", "sa2026-12-15"):
        assert not found("SECOND", value), value
