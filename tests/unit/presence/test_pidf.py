"""PIDF + RPID rendering (NOTIFY bodies) and parsing (PUBLISH bodies)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ucgate.presence.model import (
    BUILTIN_STATUSES,
    AgentSources,
    Channel,
    Device,
    Interaction,
    InteractionState,
    ManualStatus,
    PresenceDocument,
    compose,
)
from ucgate.presence.pidf import (
    CONTENT_TYPE,
    MAX_NOTE,
    PublishedState,
    parse_pidf,
    render_pidf,
    xml_text,
)
from ucgate.sip.errors import RemoteProtocolError

T0 = 1_700_000_000.0
ENTITY = "sip:alice@example.test"
PIDF = "{urn:ietf:params:xml:ns:pidf}"
DM = "{urn:ietf:params:xml:ns:pidf:data-model}"
RPID = "{urn:ietf:params:xml:ns:pidf:rpid}"
PHONE = Device("sip:alice@192.0.2.1", "sip", "sip:alice@192.0.2.1", None, T0)


def make_doc(
    *,
    devices: tuple[Device, ...] = (PHONE,),
    manual: str = "available",
    note: str | None = None,
    calls: tuple[InteractionState, ...] = (),
) -> PresenceDocument:
    sources = AgentSources("alice", devices=devices, manual=ManualStatus(manual, note=note))
    for n, state in enumerate(calls):
        sources = sources.with_interaction(Interaction(f"c{n}", Channel.VOICE, state, T0))
    return compose(sources, capacity={"voice": 1}, statuses=BUILTIN_STATUSES, now=T0)


def rendered(doc: PresenceDocument) -> ET.Element:
    body = render_pidf(doc, entity=ENTITY)
    assert body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n')
    return ET.fromstring(body)


def basic_of(root: ET.Element) -> str | None:
    return root.findtext(f"{PIDF}tuple/{PIDF}status/{PIDF}basic")


def activities_of(root: ET.Element) -> list[str]:
    node = root.find(f"{DM}person/{RPID}activities")
    return [] if node is None else [child.tag.removeprefix(RPID) for child in node]


# --- rendering ------------------------------------------------------------------------


def test_golden_on_the_phone_and_away() -> None:
    doc = make_doc(manual="away", note="back soon", calls=(InteractionState.ACTIVE,))
    assert render_pidf(doc, entity=ENTITY) == (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<presence xmlns="urn:ietf:params:xml:ns:pidf"'
        b' xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"'
        b' xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="sip:alice@example.test">'
        b'<tuple id="voice"><status><basic>open</basic></status><note>back soon</note></tuple>'
        b'<dm:person id="person"><rpid:activities><rpid:on-the-phone /><rpid:away />'
        b"</rpid:activities></dm:person></presence>"
    )
    assert CONTENT_TYPE == "application/pidf+xml"


def test_structure_read_by_pidf_consumers() -> None:
    root = rendered(make_doc(manual="busy", note="n", calls=(InteractionState.RINGING,)))
    assert root.tag == f"{PIDF}presence"
    assert root.get("entity") == ENTITY
    tuples = root.findall(f"{PIDF}tuple")
    assert len(tuples) == 1 and tuples[0].get("id")
    assert basic_of(root) == "open"
    assert root.findtext(f"{PIDF}tuple/{PIDF}note") == "n"
    person = root.find(f"{DM}person")
    assert person is not None and person.get("id")
    # The first activity is the one pjsip-style consumers show.
    assert activities_of(root) == ["on-the-phone", "busy"]


@pytest.mark.parametrize(
    ("devices", "manual", "basic"),
    [
        ((PHONE,), "available", "open"),
        ((PHONE,), "away", "open"),
        ((PHONE,), "dnd", "open"),
        ((PHONE,), "offline", "closed"),
        ((), "available", "closed"),
        ((), "away", "closed"),
    ],
)
def test_basic_status(devices: tuple[Device, ...], manual: str, basic: str) -> None:
    assert basic_of(rendered(make_doc(devices=devices, manual=manual))) == basic


def test_idle_available_has_no_person_and_no_note() -> None:
    root = rendered(make_doc())
    assert root.find(f"{DM}person") is None
    assert root.find(f".//{PIDF}note") is None


def test_unknown_activity_travels_as_rpid_other() -> None:
    doc = replace(make_doc(), activities=("away", "coffee <run>"))
    root = rendered(doc)
    node = root.find(f"{DM}person/{RPID}activities")
    assert node is not None
    assert [child.tag for child in node] == [f"{RPID}away", f"{RPID}other"]
    assert node[1].text == "coffee <run>"


def test_hostile_note_and_entity_are_escaped() -> None:
    note = "x</note><basic>closed</basic> & \"q\" 's' ünïcødé 日本 \U0001f600"
    entity = 'sip:a"b<c>&d@example.test'
    body = render_pidf(make_doc(note=note), entity=entity)
    root = ET.fromstring(body)
    assert root.get("entity") == entity
    assert root.findtext(f"{PIDF}tuple/{PIDF}note") == note
    assert basic_of(root) == "open"
    assert len(root.findall(f".//{PIDF}basic")) == 1
    body.decode("utf-8")


def test_characters_xml_cannot_carry_are_dropped() -> None:
    note = "a\x00b\x01c\x08d\x0be\x1ff\ufffeg\ud800h\tz"
    root = ET.fromstring(render_pidf(make_doc(note=note), entity=ENTITY + "\x07"))
    assert root.findtext(f"{PIDF}tuple/{PIDF}note") == "abcdefgh\tz"
    assert root.get("entity") == ENTITY


@given(note=st.text(min_size=1), entity=st.text())
def test_any_text_renders_well_formed(note: str, entity: str) -> None:
    root = ET.fromstring(render_pidf(make_doc(note=note), entity=entity))
    # XML end-of-line handling (XML 1.0 §2.11) turns CR into LF in text content.
    expected = xml_text(note).replace("\r\n", "\n").replace("\r", "\n")
    assert (root.findtext(f"{PIDF}tuple/{PIDF}note") or "") == expected
    assert root.get("entity") == xml_text(entity)


@given(
    manual=st.sampled_from(list(BUILTIN_STATUSES)),
    calls=st.lists(st.sampled_from(InteractionState), max_size=3),
    registered=st.booleans(),
    note=st.none()
    | st.text(
        alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Cn", "Zs", "Zl", "Zp")),
        max_size=40,
    ),
)
def test_render_then_parse_round_trip(
    manual: str, calls: list[InteractionState], registered: bool, note: str | None
) -> None:
    doc = make_doc(
        devices=(PHONE,) if registered else (), manual=manual, note=note, calls=tuple(calls)
    )
    state = parse_pidf(render_pidf(doc, entity=ENTITY))
    assert state.activities == doc.activities
    assert state.note == (doc.note or None)
    assert state.basic == ("open" if registered and doc.status != "offline" else "closed")


# --- parsing PUBLISH bodies -----------------------------------------------------------

# Written in the style of what pjsua, Linphone and Bria publish (prefixes, extra elements,
# whitespace, person notes); not captures.
PJSIP_STYLE = b"""<?xml version="1.0" encoding="UTF-8"?>
<presence entity="sip:alice@example.test" xmlns="urn:ietf:params:xml:ns:pidf"
 xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid">
 <tuple id="pj6b1c3f2a">
  <status>
   <basic>open</basic>
  </status>
  <timestamp>2024-05-01T10:00:00.000Z</timestamp>
 </tuple>
 <dm:person id="pj0d41e9b8">
  <rpid:activities>
   <rpid:away/>
  </rpid:activities>
  <dm:note>Gone fishing</dm:note>
 </dm:person>
</presence>
"""

LINPHONE_STYLE = b"""<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"
  xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="sip:bob@example.test">
  <tuple id="qoed6z"><status><basic>open</basic></status>
    <contact priority="0.8">sip:bob@192.0.2.5</contact></tuple>
  <dm:person id="ouvh3c"><rpid:activities><rpid:on-the-phone/><rpid:busy/></rpid:activities>
    <dm:note xml:lang="en">On the phone</dm:note></dm:person>
</presence>
"""

PREFIXED_ROOT_STYLE = b"""<?xml version='1.0' encoding='utf-8'?>
<p:presence xmlns:p="urn:ietf:params:xml:ns:pidf" xmlns:r="urn:ietf:params:xml:ns:pidf:rpid"
  xmlns:d="urn:ietf:params:xml:ns:pidf:data-model" xmlns:c="urn:ietf:params:xml:ns:pidf:cipid"
  entity="sip:carol@example.test">
  <p:tuple id="t1"><p:status><p:basic>closed</p:basic></p:status>
    <p:note>Offline</p:note></p:tuple>
  <d:person id="p1"><r:activities><r:meeting/><x:vendor xmlns:x="urn:example:x"/>
  </r:activities><c:display-name>Carol</c:display-name></d:person>
</p:presence>
"""


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (PJSIP_STYLE, PublishedState("open", ("away",), "Gone fishing")),
        (LINPHONE_STYLE, PublishedState("open", ("on-the-phone", "busy"), "On the phone")),
        (PREFIXED_ROOT_STYLE, PublishedState("closed", ("meeting",), "Offline")),
    ],
    ids=["pjsip", "linphone", "prefixed"],
)
def test_parse_client_bodies(body: bytes, expected: PublishedState) -> None:
    assert parse_pidf(body) == expected


@pytest.mark.parametrize(
    ("tuples", "basic"),
    [
        ("<tuple id='a'><status><basic>closed</basic></status></tuple>", "closed"),
        (
            "<tuple id='a'><status><basic>closed</basic></status></tuple>"
            "<tuple id='b'><status><basic> OPEN </basic></status></tuple>",
            "open",
        ),
        ("", "open"),
    ],
)
def test_parse_basic_over_tuples(tuples: str, basic: str) -> None:
    body = f"<presence xmlns='urn:ietf:params:xml:ns:pidf' entity='sip:a@x'>{tuples}</presence>"
    assert parse_pidf(body.encode()).basic == basic


def test_parse_missing_default_namespace_is_tolerated() -> None:
    body = (
        b"<presence entity='sip:a@x'>"
        b"<tuple id='a'><status><basic>closed</basic></status></tuple></presence>"
    )
    assert parse_pidf(body) == PublishedState("closed", (), None)


def test_parse_note_is_cut_and_cleaned() -> None:
    long_note = "n" * (MAX_NOTE + 50)
    body = (
        "<presence xmlns='urn:ietf:params:xml:ns:pidf' entity='sip:a@x'>"
        "<note>   </note>"
        f"<tuple id='a'><status><basic>open</basic></status><note> {long_note} </note></tuple>"
        "</presence>"
    ).encode()
    assert parse_pidf(body).note == "n" * MAX_NOTE


def test_parse_duplicate_activities_once() -> None:
    body = (
        b"<presence xmlns='urn:ietf:params:xml:ns:pidf' xmlns:r='urn:ietf:params:xml:ns:pidf:rpid'"
        b" entity='sip:a@x'><r:activities><r:away/><r:away/></r:activities>"
        b"<r:activities><r:busy/><r:away/></r:activities></presence>"
    )
    assert parse_pidf(body).activities == ("away", "busy")


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:a@x"><note>&lol3;</note></presence>
"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!doctype presence [<!entity xxe SYSTEM "file:///etc/passwd">]>
<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:a@x"><note>&xxe;</note></presence>
"""


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"", 400),
        (b"not xml at all", 400),
        (b"<presence xmlns='urn:ietf:params:xml:ns:pidf'>", 400),
        (b"<dialog-info xmlns='urn:ietf:params:xml:ns:dialog-info'/>", 400),
        (b"<presence xmlns='urn:example:other'/>", 400),
        (b"<presence xmlns='urn:ietf:params:xml:ns:pidf'><rpid:away/></presence>", 400),
        (BILLION_LAUGHS, 400),
        (EXTERNAL_ENTITY, 400),
        (
            "<presence xmlns='urn:ietf:params:xml:ns:pidf'><note>é</note></presence>".encode(
                "latin-1"
            ),
            400,
        ),
        ("<presence xmlns='urn:ietf:params:xml:ns:pidf'/>".encode("utf-16"), 400),
        (
            b"<presence xmlns='urn:ietf:params:xml:ns:pidf'><tuple id='a'><status>"
            b"<basic>maybe</basic></status></tuple></presence>",
            400,
        ),
        (b"<presence xmlns='urn:ietf:params:xml:ns:pidf'>" + b" " * 70_000 + b"</presence>", 413),
    ],
    ids=[
        "empty",
        "text",
        "truncated",
        "dialog-info",
        "wrong-namespace",
        "unbound-prefix",
        "billion-laughs",
        "external-entity",
        "latin-1",
        "utf-16",
        "bad-basic",
        "too-large",
    ],
)
def test_parse_refuses(body: bytes, status: int) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        parse_pidf(body)
    assert caught.value.status == status


def test_parse_size_cap_is_a_parameter() -> None:
    with pytest.raises(RemoteProtocolError):
        parse_pidf(PJSIP_STYLE, max_size=100)
    assert parse_pidf(PJSIP_STYLE, max_size=len(PJSIP_STYLE)).basic == "open"


@given(st.binary(max_size=300))
def test_parse_fuzz_only_raises_the_protocol_error(body: bytes) -> None:
    try:
        state = parse_pidf(body)
    except RemoteProtocolError as err:
        assert err.status in (400, 413)
    else:
        assert state.basic in ("open", "closed")


@given(st.text(max_size=200))
def test_parse_fuzz_text_inside_a_valid_frame(inner: str) -> None:
    body = f"<presence xmlns='urn:ietf:params:xml:ns:pidf'>{inner}</presence>".encode()
    try:
        parse_pidf(body)
    except RemoteProtocolError as err:
        assert err.status == 400
