"""The media backends the anchoring tests run against, each for real: an rtpengine daemon
started on free ports, or ucgate's embedded media workers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sip_test_rig.rtpengine import Rtpengine
from tests.support.ucgate_process import UcgateProcess

BACKENDS = ("rtpengine", "embedded")


@dataclass
class MediaUnderTest:
    name: str
    engine: Rtpengine | None = None

    @classmethod
    def start(cls, name: str, workdir: Path) -> MediaUnderTest:
        if name == "rtpengine":
            return cls(name, Rtpengine(workdir / "rtpengine").start())
        return cls(name)

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.stop()

    def toml(self) -> str:
        if self.engine is not None:
            return (
                f'[media]\nbackend = "rtpengine"\nrtpengine = "127.0.0.1:{self.engine.ng_port}"\n'
            )
        return '[media]\nbackend = "embedded"\n'

    def active_calls(self, node: UcgateProcess) -> list[Any]:
        """Anchored sessions alive: ucgate's count, and rtpengine's own list when it runs
        (a session ucgate forgot to delete would still be in rtpengine)."""
        status, stats = node.http_get("/v1/media", key=node.api_key)
        assert status == 200 and isinstance(stats, dict), stats
        assert stats["backend"] == self.name, stats
        if self.engine is not None:
            return self.engine.active_calls() or ([None] * int(stats["sessions"]))
        return [None] * int(stats["sessions"])
