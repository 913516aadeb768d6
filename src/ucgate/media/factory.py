"""The configured media anchor (``[media] backend``)."""

from __future__ import annotations

import sys

from ucgate.config import MediaBackend, UcgateConfig
from ucgate.media.anchor import MediaAnchor
from ucgate.media.embedded import EmbeddedAnchor
from ucgate.media.rtpengine import RtpengineAnchor

_WILDCARDS = ("0.0.0.0", "::", "")


def media_host(config: UcgateConfig) -> str:
    """Where the embedded workers receive media (see ``media.embedded.bind_host``)."""
    chosen = config.media.embedded.bind_host or config.sip.advertised_host
    if chosen is None:
        first = config.sip.listen[0].host if config.sip.listen else ""
        chosen = "127.0.0.1" if first in _WILDCARDS else first
    return chosen.strip("[]")


def build_anchor(config: UcgateConfig) -> MediaAnchor | None:
    media = config.media
    if media.backend is MediaBackend.RTPENGINE:
        return RtpengineAnchor(media.rtpengine.host, media.rtpengine.port)
    if media.backend is MediaBackend.EMBEDDED:
        e = media.embedded
        return EmbeddedAnchor(
            max_workers=e.max_workers,
            calls_per_worker=e.calls_per_worker,
            min_workers=e.min_workers,
            bind_host=media_host(config),
            python=sys.executable,
            ping_interval=e.ping_interval,
            ping_timeout=e.ping_timeout,
            log_format=config.log.format.value,
            log_level=config.log.level.value,
        )
    return None
