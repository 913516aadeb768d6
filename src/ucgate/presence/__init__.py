"""Presence: the per-agent model and its SIP documents, all pure (sans-IO).

- :mod:`ucgate.presence.model`: sources, the composed :class:`PresenceDocument`, and the
  derivation rules (:func:`compose`);
- :mod:`ucgate.presence.pidf`: PIDF + RPID bodies for ``Event: presence`` (RFC 3863,
  RFC 4480) and the parser for PUBLISH bodies (RFC 3903);
- :mod:`ucgate.presence.dialog_info`: dialog-info bodies for ``Event: dialog`` BLF
  (RFC 4235).
"""

from ucgate.presence.dialog_info import render_dialog_info
from ucgate.presence.model import (
    BUILTIN_STATUSES,
    AgentSources,
    Channel,
    ChannelLoad,
    Device,
    Interaction,
    InteractionState,
    ManualStatus,
    PresenceDataError,
    PresenceDocument,
    Published,
    StatusDef,
    VoiceState,
    compose,
    status_table,
)
from ucgate.presence.pidf import PublishedState, parse_pidf, render_pidf

__all__ = [
    "BUILTIN_STATUSES",
    "AgentSources",
    "Channel",
    "ChannelLoad",
    "Device",
    "Interaction",
    "InteractionState",
    "ManualStatus",
    "PresenceDataError",
    "PresenceDocument",
    "Published",
    "PublishedState",
    "StatusDef",
    "VoiceState",
    "compose",
    "parse_pidf",
    "render_dialog_info",
    "render_pidf",
    "status_table",
]
