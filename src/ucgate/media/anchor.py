"""The media-anchor port: what the B2BUA asks of a media backend.

Most legs keep SDP pass-through: two SIP phones, or a phone and a trunk, exchange RTP
directly and ucgate never touches a packet. A leg pair is *anchored* only when the two
sides speak different media profiles (a browser's WebRTC: ICE + DTLS-SRTP + rtcp-mux,
usually Opus; a trunk's plain RTP/AVP with G.711). The backend then terminates each side
and bridges the audio, transcoding where the codecs differ.

The shape follows rtpengine's ng protocol (offer / answer / delete), the interface
Kamailio and OpenSIPS drive: the B2BUA hands over each SDP body that crosses the bridge
and gets back the body to send to the other side (RFC 3264 offer/answer). One anchored
media session is identified by :class:`MediaKey`: the B2BUA call and, because an INVITE
may fork to several devices with different profiles, the fork ("branch") it belongs to.

``side`` names who produced the body: ``"a"`` is the caller's leg (the one that sent the
first offer), ``"b"`` the callee's. A re-INVITE from the callee is ``offer(key, "b", …)``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

Side = Literal["a", "b"]


class MediaProfile(enum.Enum):
    """The media profile a leg speaks."""

    # RTP/AVP (RFC 3551), no ICE, no encryption: desk phones, PBX trunks, sipp.
    RTP = "rtp"
    # UDP/TLS/RTP/SAVPF with ICE (RFC 8445), DTLS-SRTP (RFC 5763/5764) and rtcp-mux
    # (RFC 5761): what every browser requires (RFC 8827, RFC 8834).
    WEBRTC = "webrtc"


@dataclass(frozen=True, slots=True)
class MediaKey:
    """One anchored media session: a B2BUA call's fork."""

    call_id: str
    branch: str

    @property
    def label(self) -> str:
        return f"{self.call_id}/{self.branch}"


class MediaError(Exception):
    """The backend could not do what was asked; carries the SIP status to answer with.

    488 for SDP the backend cannot bridge (no common codec after transcoding, RFC 3261
    §21.4.26), 503 when it is down or out of capacity (§21.5.4), 500 otherwise.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


# Called by a backend when media sessions die on their own (a media worker crashed):
# the B2BUA ends those calls cleanly (BYE both legs, records closed).
LostCallback = Callable[[list[MediaKey], str], None]


class MediaAnchor(Protocol):
    """A media backend. Implementations: ``embedded`` (aiortc + pjsua2 workers) and
    ``rtpengine`` (ng control protocol)."""

    name: str

    async def start(self, on_lost: LostCallback) -> None:
        """Connect / spawn what the backend needs. Raises :class:`MediaError` if it cannot."""

    async def offer(self, key: MediaKey, side: Side, sdp: bytes, toward: MediaProfile) -> bytes:
        """``side`` offers ``sdp``; return the offer to send to the other side, which speaks
        ``toward``. Called for the initial offer and for every re-offer (hold, resume)."""

    async def answer(self, key: MediaKey, side: Side, sdp: bytes, toward: MediaProfile) -> bytes:
        """``side`` answers the pending offer with ``sdp``; return the answer for the offerer,
        which speaks ``toward``."""

    async def delete(self, key: MediaKey) -> None:
        """Release the session (call ended, fork lost). Idempotent; never raises."""

    async def close(self) -> None:
        """Release everything (server shutdown)."""

    def stats(self) -> dict[str, object]:
        """Counters for /healthz and benchmarks (sessions active, workers, …)."""
