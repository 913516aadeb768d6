"""dialog-info documents for BLF (RFC 4235), ``Content-Type: application/dialog-info+xml``.

One ``<dialog>`` per voice interaction of the agent, in the shape desk phones' busy-lamp
fields read (the state, the direction, and the remote party's identity, which phones
show and use with the dialog identifiers for directed pickup)::

    <dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="3" state="full"
                 entity="sip:alice@example.test">
      <dialog id="c1" call-id="a84b4c76e66710" local-tag="1928301774"
              remote-tag="456887766" direction="recipient">
        <state>early</state>
        <local><identity>sip:alice@example.test</identity>
               <target uri="sip:alice@example.test"/></local>
        <remote><identity display="Bob">sip:bob@example.org</identity>
                <target uri="sip:bob@example.org"/></remote>
      </dialog>
    </dialog-info>

State mapping (RFC 4235 §3.7.1): ringing → ``early``; active and held → ``confirmed``;
wrap-up → ``terminated`` (the call is over; phones show the key idle). A held call also
carries ``+sip.rendering=no`` on the local target (RFC 4235 §4.1.6.2, RFC 3840 §10),
which is the only standard way to say "on hold". With no voice interaction the document
is an empty full ``<dialog-info … state="full"/>``, which phones show as idle.

``direction`` (§4.1.1): the agent's outbound call is ``initiator``, inbound ``recipient``;
left out when unknown. ``version`` belongs to each subscription (§4.1: it starts at 0 and
grows by one with every NOTIFY sent to that watcher), so the caller passes it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from ucgate.presence.model import (
    DIRECTION_INBOUND,
    DIRECTION_OUTBOUND,
    Channel,
    Interaction,
    InteractionState,
    PresenceDocument,
)
from ucgate.presence.pidf import serialize, xml_text
from ucgate.sip.errors import LocalProtocolError

DIALOG_INFO_NS = "urn:ietf:params:xml:ns:dialog-info"
CONTENT_TYPE = "application/dialog-info+xml"

_STATE: dict[InteractionState, str] = {
    InteractionState.RINGING: "early",
    InteractionState.ACTIVE: "confirmed",
    InteractionState.HELD: "confirmed",
    InteractionState.WRAP_UP: "terminated",
}

_DIRECTION: dict[str, str] = {
    DIRECTION_OUTBOUND: "initiator",
    DIRECTION_INBOUND: "recipient",
}


def dialog_state(state: InteractionState) -> str:
    """The RFC 4235 §3.7.1 dialog state shown for an interaction state."""
    return _STATE[state]


def voice_dialogs(doc: PresenceDocument) -> tuple[Interaction, ...]:
    """The interactions rendered as dialogs: voice ones, in the document's order."""
    return tuple(i for i in doc.interactions if i.channel is Channel.VOICE)


def render_dialog_info(
    doc: PresenceDocument, *, entity: str, version: int, full: bool = True
) -> bytes:
    """The dialog-info body for a NOTIFY to one watcher of ``entity``.

    ``full=False`` marks the document ``partial`` (§4.1); the caller then decides which
    dialogs ``doc`` holds. Raises ``LocalProtocolError`` for a negative version.
    """
    if version < 0:
        raise LocalProtocolError("dialog-info version must be >= 0 (RFC 4235 §4.1)")
    entity = xml_text(entity)
    root = ET.Element(
        "dialog-info",
        {
            "xmlns": DIALOG_INFO_NS,
            "version": str(version),
            "state": "full" if full else "partial",
            "entity": entity,
        },
    )
    for interaction in voice_dialogs(doc):
        _add_dialog(root, interaction, entity)
    return serialize(root)


def _add_dialog(root: ET.Element, interaction: Interaction, entity: str) -> None:
    attrs = {"id": xml_text(interaction.id)}
    for name, value in (
        ("call-id", interaction.call_id),
        ("local-tag", interaction.local_tag),
        ("remote-tag", interaction.remote_tag),
    ):
        if value:
            attrs[name] = xml_text(value)
    direction = _DIRECTION.get(interaction.direction or "")
    if direction is not None:
        attrs["direction"] = direction
    dialog = ET.SubElement(root, "dialog", attrs)
    # §4.1.6 element order: state, (duration, replaces, referred-by, route-set), local,
    # remote.
    ET.SubElement(dialog, "state").text = dialog_state(interaction.state)

    local = ET.SubElement(dialog, "local")
    ET.SubElement(local, "identity").text = entity
    target = ET.SubElement(local, "target", {"uri": entity})
    if interaction.state is InteractionState.HELD:
        ET.SubElement(target, "param", {"pname": "+sip.rendering", "pvalue": "no"})

    if interaction.remote:
        remote_uri = xml_text(interaction.remote)
        remote = ET.SubElement(dialog, "remote")
        identity_attrs = {}
        if interaction.remote_display:
            identity_attrs["display"] = xml_text(interaction.remote_display)
        ET.SubElement(remote, "identity", identity_attrs).text = remote_uri
        ET.SubElement(remote, "target", {"uri": remote_uri})
