"""dialog-info+xml (RFC 4235) bodies for BLF watchers."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ucgate.presence.dialog_info import (
    CONTENT_TYPE,
    dialog_state,
    render_dialog_info,
    voice_dialogs,
)
from ucgate.presence.model import (
    BUILTIN_STATUSES,
    AgentSources,
    Channel,
    Device,
    Interaction,
    InteractionState,
    PresenceDocument,
    compose,
)
from ucgate.presence.pidf import xml_text
from ucgate.sip.errors import LocalProtocolError

T0 = 1_700_000_000.0
ENTITY = "sip:alice@example.test"
NS = "{urn:ietf:params:xml:ns:dialog-info}"
PHONE = Device("sip:alice@192.0.2.1", "sip", "sip:alice@192.0.2.1", None, T0)

INBOUND_RINGING = Interaction(
    "c1",
    Channel.VOICE,
    InteractionState.RINGING,
    T0,
    remote="sip:+15550100@example.test",
    remote_display="Bob Caller",
    direction="inbound",
    call_id="a84b4c76e66710@192.0.2.9",
    local_tag="1928301774",
    remote_tag=None,
)


def doc_with(
    *interactions: Interaction, devices: tuple[Device, ...] = (PHONE,)
) -> PresenceDocument:
    sources = AgentSources("alice", devices=devices, interactions=interactions)
    return compose(sources, capacity={"voice": 2, "chat": 2}, statuses=BUILTIN_STATUSES, now=T0)


def parsed(doc: PresenceDocument, version: int = 0, *, full: bool = True) -> ET.Element:
    return ET.fromstring(render_dialog_info(doc, entity=ENTITY, version=version, full=full))


def test_golden_ringing_inbound() -> None:
    body = render_dialog_info(doc_with(INBOUND_RINGING), entity=ENTITY, version=3)
    assert body == (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="3" state="full"'
        b' entity="sip:alice@example.test">'
        b'<dialog id="c1" call-id="a84b4c76e66710@192.0.2.9" local-tag="1928301774"'
        b' direction="recipient"><state>early</state>'
        b"<local><identity>sip:alice@example.test</identity>"
        b'<target uri="sip:alice@example.test" /></local>'
        b'<remote><identity display="Bob Caller">sip:+15550100@example.test</identity>'
        b'<target uri="sip:+15550100@example.test" /></remote>'
        b"</dialog></dialog-info>"
    )
    assert CONTENT_TYPE == "application/dialog-info+xml"


def test_idle_is_an_empty_full_document() -> None:
    root = parsed(doc_with(), version=0)
    assert root.tag == f"{NS}dialog-info"
    assert root.attrib == {"version": "0", "state": "full", "entity": ENTITY}
    assert list(root) == []


@pytest.mark.parametrize(
    ("state", "shown"),
    [
        (InteractionState.RINGING, "early"),
        (InteractionState.ACTIVE, "confirmed"),
        (InteractionState.HELD, "confirmed"),
        (InteractionState.WRAP_UP, "terminated"),
    ],
)
def test_state_mapping(state: InteractionState, shown: str) -> None:
    assert dialog_state(state) == shown
    root = parsed(doc_with(Interaction("x", Channel.VOICE, state, T0)))
    assert root.findtext(f"{NS}dialog/{NS}state") == shown


@pytest.mark.parametrize(
    ("direction", "attribute"),
    [("inbound", "recipient"), ("outbound", "initiator"), (None, None), ("sideways", None)],
)
def test_direction(direction: str | None, attribute: str | None) -> None:
    call = Interaction("x", Channel.VOICE, InteractionState.ACTIVE, T0, direction=direction)
    dialog = parsed(doc_with(call)).find(f"{NS}dialog")
    assert dialog is not None
    assert dialog.get("direction") == attribute


def test_what_blf_keys_read_from_a_confirmed_outbound_call() -> None:
    call = Interaction(
        "c7",
        Channel.VOICE,
        InteractionState.ACTIVE,
        T0,
        remote="sip:carol@example.org",
        direction="outbound",
        call_id="cid-7",
        local_tag="lt",
        remote_tag="rt",
    )
    dialog = parsed(doc_with(call), version=9).find(f"{NS}dialog")
    assert dialog is not None
    assert dialog.attrib == {
        "id": "c7",
        "call-id": "cid-7",
        "local-tag": "lt",
        "remote-tag": "rt",
        "direction": "initiator",
    }
    assert [child.tag.removeprefix(NS) for child in dialog] == ["state", "local", "remote"]
    assert dialog.findtext(f"{NS}state") == "confirmed"
    identity = dialog.find(f"{NS}remote/{NS}identity")
    assert identity is not None and identity.text == "sip:carol@example.org"
    assert "display" not in identity.attrib
    assert dialog.findtext(f"{NS}local/{NS}identity") == ENTITY


def test_held_marks_the_local_target_not_rendering() -> None:
    held = Interaction("h", Channel.VOICE, InteractionState.HELD, T0)
    param = parsed(doc_with(held)).find(f"{NS}dialog/{NS}local/{NS}target/{NS}param")
    assert param is not None
    assert param.attrib == {"pname": "+sip.rendering", "pvalue": "no"}
    active = Interaction("a", Channel.VOICE, InteractionState.ACTIVE, T0)
    assert parsed(doc_with(active)).find(f".//{NS}param") is None


def test_only_voice_interactions_become_dialogs_in_order() -> None:
    doc = doc_with(
        Interaction("v1", Channel.VOICE, InteractionState.HELD, T0),
        Interaction("chat", Channel.CHAT, InteractionState.ACTIVE, T0),
        Interaction("v2", Channel.VOICE, InteractionState.RINGING, T0),
    )
    assert [i.id for i in voice_dialogs(doc)] == ["v1", "v2"]
    root = parsed(doc)
    assert [d.get("id") for d in root.findall(f"{NS}dialog")] == ["v1", "v2"]
    assert [d.findtext(f"{NS}state") for d in root.findall(f"{NS}dialog")] == [
        "confirmed",
        "early",
    ]


def test_no_remote_means_no_remote_element() -> None:
    call = Interaction("x", Channel.VOICE, InteractionState.ACTIVE, T0, remote_display="Ghost")
    assert parsed(doc_with(call)).find(f"{NS}dialog/{NS}remote") is None


def test_dialogs_are_shown_even_when_the_last_device_left() -> None:
    # The BLF shows the call; the presence document says voice offline (rule R1).
    doc = doc_with(INBOUND_RINGING, devices=())
    assert len(parsed(doc).findall(f"{NS}dialog")) == 1


def test_version_and_partial_state() -> None:
    root = parsed(doc_with(INBOUND_RINGING), version=12345, full=False)
    assert root.get("version") == "12345"
    assert root.get("state") == "partial"
    with pytest.raises(LocalProtocolError):
        render_dialog_info(doc_with(), entity=ENTITY, version=-1)


def test_hostile_remote_identity_is_escaped() -> None:
    display = 'Eve "</identity><state>terminated</state>" & <Co> ñ 日本 \x01'
    remote = 'sip:eve@example.org;x="<a&b>"'
    call = Interaction(
        'id"<&>', Channel.VOICE, InteractionState.ACTIVE, T0, remote=remote, remote_display=display
    )
    body = render_dialog_info(doc_with(call), entity=ENTITY, version=1)
    dialog = ET.fromstring(body).find(f"{NS}dialog")
    assert dialog is not None
    assert dialog.get("id") == 'id"<&>'
    assert dialog.findtext(f"{NS}state") == "confirmed"
    assert len(dialog.findall(f".//{NS}state")) == 1
    identity = dialog.find(f"{NS}remote/{NS}identity")
    assert identity is not None
    assert identity.get("display") == display.replace("\x01", "")
    assert identity.text == remote
    target = dialog.find(f"{NS}remote/{NS}target")
    assert target is not None and target.get("uri") == remote


_ident = st.text(max_size=30)


@given(
    calls=st.lists(
        st.builds(
            Interaction,
            id=_ident,
            channel=st.just(Channel.VOICE),
            state=st.sampled_from(InteractionState),
            since=st.just(T0),
            remote=st.none() | _ident,
            remote_display=st.none() | _ident,
            direction=st.sampled_from([None, "inbound", "outbound"]),
            call_id=st.none() | _ident,
            local_tag=st.none() | _ident,
            remote_tag=st.none() | _ident,
        ),
        max_size=4,
    ),
    version=st.integers(min_value=0, max_value=2**40),
    entity=_ident,
)
def test_any_dialogs_render_well_formed(
    calls: list[Interaction], version: int, entity: str
) -> None:
    body = render_dialog_info(doc_with(*calls), entity=entity, version=version)
    root = ET.fromstring(body)
    assert root.get("version") == str(version)
    assert root.get("entity") == xml_text(entity)
    dialogs = root.findall(f"{NS}dialog")
    assert len(dialogs) == len(calls)
    for dialog, call in zip(dialogs, calls, strict=True):
        assert dialog.get("id") == xml_text(call.id)
        assert dialog.findtext(f"{NS}state") == dialog_state(call.state)
