"""The configured media anchor (``[media] backend``)."""

from __future__ import annotations

from ucgate.config import MediaBackend, MediaConfig
from ucgate.media.anchor import MediaAnchor, MediaError
from ucgate.media.rtpengine import RtpengineAnchor


def build_anchor(config: MediaConfig) -> MediaAnchor | None:
    if config.backend is MediaBackend.RTPENGINE:
        return RtpengineAnchor(config.rtpengine.host, config.rtpengine.port)
    if config.backend is MediaBackend.EMBEDDED:
        raise MediaError(503, "the embedded media backend is not available yet")
    return None
