"""PIDF presence documents (RFC 3863) with RPID activities (RFC 4480).

:func:`render_pidf` makes the body of a NOTIFY for ``Event: presence`` (RFC 3856 §6.6,
``Content-Type: application/pidf+xml``); :func:`parse_pidf` reads the body of a PUBLISH
from a softphone (RFC 3903 §4, RFC 3856 §7).

Shape of what we render, chosen for what PIDF consumers on desk phones and softphones
read (pjsip's ``pjsip-simple/pidf.c`` and ``rpid.c`` match the unprefixed
``presence``/``tuple``/``status``/``basic`` names and find ``person``, ``activities`` and
``note`` by the end of the element name, using only the *first* activity)::

    <presence xmlns="urn:ietf:params:xml:ns:pidf"
              xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"
              xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="sip:alice@example.test">
      <tuple id="voice"><status><basic>open</basic></status><note>…</note></tuple>
      <dm:person id="person"><rpid:activities><rpid:on-the-phone/>…</rpid:activities></dm:person>
    </presence>

``basic`` is ``open`` when the agent can be reached by voice at all: a device is
registered (voice is not offline) and the overall status is not ``offline``. Being
away, busy or on a call is said by the activities, not by ``closed`` (RFC 4480 §1: basic
status is about the ability to communicate, activities about the person). The most
significant activity comes first because some consumers read only the first.

Parsing is defensive: bodies are capped, must be UTF-8, and any DOCTYPE or ENTITY
declaration is refused before the XML parser sees the body, so entity expansion attacks
("billion laughs") and external entities never reach it. Namespace prefixes are free
(pjsip, Linphone and Bria all spell them differently): elements are matched by their
namespace URI and local name.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from ucgate.presence.model import (
    PUBLISHED_CLOSED,
    PUBLISHED_OPEN,
    RPID_ACTIVITIES,
    PresenceDocument,
    VoiceState,
)
from ucgate.sip.errors import RemoteProtocolError

PIDF_NS = "urn:ietf:params:xml:ns:pidf"
DATA_MODEL_NS = "urn:ietf:params:xml:ns:pidf:data-model"
RPID_NS = "urn:ietf:params:xml:ns:pidf:rpid"
CONTENT_TYPE = "application/pidf+xml"

# A PUBLISH body is a few hundred bytes; 64 KiB leaves room for rich clients and stops a
# peer from making us parse megabytes.
MAX_BODY = 64 * 1024
# Notes are shown on a phone's display line; longer text from a peer is cut.
MAX_NOTE = 256

_XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>\n'

# Characters XML 1.0 cannot carry at all (§2.2 Char), even escaped: a note typed with a
# control character must not make the whole document ill-formed.
_NOT_XML_CHAR = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_DECLARATION = re.compile(r"<!\s*(DOCTYPE|ENTITY|ELEMENT|ATTLIST)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class PublishedState:
    """What one PIDF body says: basic status, RPID activities, and a note."""

    basic: str
    activities: tuple[str, ...]
    note: str | None


def xml_text(value: str) -> str:
    """``value`` without the characters XML 1.0 cannot represent (escaping is ET's job)."""
    return _NOT_XML_CHAR.sub("", value)


def serialize(root: ET.Element) -> bytes:
    """UTF-8 bytes with an XML declaration.

    Elements are built with literal ``prefix:name`` tags and ``xmlns`` attributes, so
    ElementTree writes them as given and the prefixes are ours (no ``ns0``, no global
    ``register_namespace``).
    """
    return (_XML_DECLARATION + ET.tostring(root, encoding="unicode")).encode("utf-8")


def basic_status(doc: PresenceDocument) -> str:
    """``open`` when a device is registered and the status is not ``offline``."""
    reachable = doc.voice is not VoiceState.OFFLINE and doc.status != "offline"
    return PUBLISHED_OPEN if reachable else PUBLISHED_CLOSED


def render_pidf(doc: PresenceDocument, *, entity: str) -> bytes:
    """The PIDF body for a NOTIFY about ``doc`` (RFC 3856 §6.6, RFC 3863 §4)."""
    root = ET.Element(
        "presence",
        {
            "xmlns": PIDF_NS,
            "xmlns:dm": DATA_MODEL_NS,
            "xmlns:rpid": RPID_NS,
            "entity": xml_text(entity),
        },
    )
    # RFC 3863 §4.1.2: tuple ids only need to be unique in the document; a fixed one
    # keeps successive NOTIFYs about the same tuple comparable.
    tuple_ = ET.SubElement(root, "tuple", {"id": "voice"})
    status = ET.SubElement(tuple_, "status")
    ET.SubElement(status, "basic").text = basic_status(doc)
    if doc.note:
        ET.SubElement(tuple_, "note").text = xml_text(doc.note)
    if doc.activities:
        # RFC 4479 §3.1 person (what the human does) carries the RFC 4480 activities.
        person = ET.SubElement(root, "dm:person", {"id": "person"})
        activities = ET.SubElement(person, "rpid:activities")
        for activity in doc.activities:
            if activity in RPID_ACTIVITIES:
                ET.SubElement(activities, f"rpid:{activity}")
            else:
                # RFC 4480 §3.2: anything else travels as free text in <other>.
                ET.SubElement(activities, "rpid:other").text = xml_text(activity)
    return serialize(root)


def parse_pidf(body: bytes, *, max_size: int = MAX_BODY) -> PublishedState:
    """Read a PUBLISH body; a body we cannot accept raises ``RemoteProtocolError``.

    - larger than ``max_size`` → 413 (RFC 3261 §21.4.11);
    - not UTF-8, a DTD declaration, not well-formed, or a root other than the PIDF
      ``presence`` → 400 (RFC 3903 §6 step 4 leaves the code to us);
    - a ``basic`` other than ``open``/``closed`` → 400 (RFC 3863 §4.1.4).

    With several tuples the result is ``open`` if any tuple is open (the person can be
    reached through it). A body with no ``basic`` at all (person-only, RFC 4479) counts
    as ``open``: the publisher is up, it just says nothing about its tuples.
    Activities are RFC 4480 element names in document order without duplicates; unknown
    elements inside ``<activities>`` are dropped. The note is the first non-empty
    ``note`` in the document, cut to :data:`MAX_NOTE` characters.
    """
    root = _parse_xml(body, max_size=max_size)
    namespace, name = _split(root.tag)
    # Some clients forget the default namespace; the element name is still unambiguous.
    if name != "presence" or namespace not in (PIDF_NS, ""):
        raise RemoteProtocolError("PUBLISH body is not a PIDF presence document", 400)

    basics: list[str] = []
    activities: list[str] = []
    note: str | None = None
    for element in root.iter():
        _, local = _split(element.tag)
        if local == "basic":
            value = (element.text or "").strip().lower()
            if value not in (PUBLISHED_OPEN, PUBLISHED_CLOSED):
                raise RemoteProtocolError("PIDF basic must be open or closed", 400)
            basics.append(value)
        elif local == "activities":
            for child in element:
                _, activity = _split(child.tag)
                if activity in RPID_ACTIVITIES and activity not in activities:
                    activities.append(activity)
        elif local == "note" and note is None:
            text = xml_text(element.text or "").strip()
            if text:
                note = text[:MAX_NOTE]
    basic = PUBLISHED_OPEN if not basics or PUBLISHED_OPEN in basics else PUBLISHED_CLOSED
    return PublishedState(basic=basic, activities=tuple(activities), note=note)


def _parse_xml(body: bytes, *, max_size: int) -> ET.Element:
    if len(body) > max_size:
        raise RemoteProtocolError("XML body too large", 413)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError("XML body is not UTF-8", 400) from None
    # Refused before parsing: entity declarations are the vector of expansion and
    # external-entity attacks, and no presence format needs a DTD.
    if _DECLARATION.search(text):
        raise RemoteProtocolError("XML body with a DTD declaration", 400)
    # Expat honours an encoding declaration; one that disagrees with the UTF-8 checked
    # above makes the parse fail, which is a 400 like any other malformed body.
    try:
        return ET.fromstring(body)
    except ET.ParseError:
        raise RemoteProtocolError("XML body is not well-formed", 400) from None


def _split(tag: str) -> tuple[str, str]:
    """``{ns}local`` → ``(ns, local)``; ``""`` namespace when there is none."""
    if tag.startswith("{"):
        namespace, _, local = tag[1:].partition("}")
        return namespace, local
    return "", tag
