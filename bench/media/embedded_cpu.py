"""CPU per bridged call and sustained concurrent calls of the embedded media anchor.

For each call count N: start an ``EmbeddedAnchor`` (real worker processes), set up N
browser→trunk calls (an aiortc peer offering WebRTC with the chosen codec, a plain
RTP/PCMU tone endpoint answering), wait until every call carries its tones both ways,
then measure for ``--seconds``:

* worker CPU (utime+stime of every worker PID from /proc, in % of one core), per call;
* this load generator's own CPU (the aiortc "browsers" and RTP endpoints share the two
  cores with the workers: on a small machine it is part of the limit);
* delivery: RTP packets each trunk received vs the 50/s a 20 ms stream carries, and
  whether each far end still detects the other's tone in the window.

A call count is *sustained* when every call keeps >= 95 % of its packets and both tones.

    .venv/bin/python bench/media/embedded_cpu.py --codec opus --calls 1 4 8 12
    .venv/bin/python bench/media/embedded_cpu.py --codec pcmu --calls 1 4 8 12

One JSON object per line on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sip_test_rig.media import DEFAULT_TONES
from tests.support.rtp_tone import RtpToneEndpoint
from tests.support.webrtc_peer import WebRtcPeer
from ucgate.media.anchor import MediaKey, MediaProfile
from ucgate.media.embedded import EmbeddedAnchor

TONE_TRUNK, TONE_BROWSER = DEFAULT_TONES[0], DEFAULT_TONES[2]
TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (fields 14 and 15 of /proc/pid/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(calls: int, codec: str | None, seconds: float, per_worker: int) -> dict[str, object]:
    workers = max(1, math.ceil(calls / per_worker))
    anchor = EmbeddedAnchor(
        max_workers=workers, calls_per_worker=per_worker, min_workers=workers, log_level="warning"
    )
    await anchor.start(lambda keys, reason: print("LOST", keys, reason, file=sys.stderr))
    peers: list[tuple[WebRtcPeer, RtpToneEndpoint]] = []
    try:
        for n in range(calls):
            key = MediaKey(f"bench-{n}", "b")
            browser = WebRtcPeer(TONE_BROWSER, [TONE_TRUNK, TONE_BROWSER], codec=codec)
            trunk = await RtpToneEndpoint(TONE_TRUNK, [TONE_TRUNK, TONE_BROWSER]).start()
            peers.append((browser, trunk))
            rtp_offer = await anchor.offer(key, "a", await browser.offer(), MediaProfile.RTP)
            trunk.remote_sdp(rtp_offer)
            answer = await anchor.answer(key, "b", trunk.sdp(), MediaProfile.WEBRTC)
            await browser.accept_answer(answer)
        for browser, trunk in peers:
            await browser.wait_tone(TONE_TRUNK, timeout=30)
            await trunk.wait_tone(TONE_BROWSER, timeout=30)
        for browser, trunk in peers:
            browser.reset_audio()
            trunk.reset_audio()
        pids = list(anchor.worker_pids().values())
        received = [t.received for _, t in peers]
        cpu0 = sum(proc_cpu(p) for p in pids)
        gen0 = self_cpu()
        t0 = time.monotonic()
        await asyncio.sleep(seconds)  # the measurement window itself
        wall = time.monotonic() - t0
        cpu = sum(proc_cpu(p) for p in pids) - cpu0
        gen = self_cpu() - gen0
        expected = wall * 50
        delivery = [(t.received - r) / expected for (_, t), r in zip(peers, received, strict=True)]
        tones = sum(
            1
            for b, t in peers
            if TONE_TRUNK in b.detector.report()["detected"]
            and TONE_BROWSER in t.detector.report()["detected"]
        )
        sustained = tones == calls and min(delivery) >= 0.95
        return {
            "codec": codec or "opus",
            "calls": calls,
            "workers": len(pids),
            "calls_per_worker": per_worker,
            "seconds": round(wall, 2),
            "worker_cpu_pct": round(100 * cpu / wall, 1),
            "worker_cpu_pct_per_call": round(100 * cpu / wall / calls, 2),
            "loadgen_cpu_pct": round(100 * gen / wall, 1),
            "min_delivery": round(min(delivery), 3),
            "calls_with_both_tones": tones,
            "sustained": sustained,
        }
    finally:
        for browser, trunk in peers:
            await browser.close()
            await trunk.stop()
        await anchor.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--codec", choices=("opus", "pcmu"), default="opus")
    parser.add_argument("--calls", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--calls-per-worker", type=int, default=4)
    args = parser.parse_args()
    codec = "audio/PCMU" if args.codec == "pcmu" else "audio/opus"
    for calls in args.calls:
        result = await run(calls, codec, args.seconds, args.calls_per_worker)
        result["codec"] = args.codec
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
