"""The embedded media anchor with real peers on both sides.

A WebRTC peer (aiortc: ICE, DTLS-SRTP, Opus or PCMU) stands in for the browser; a plain
RTP/AVP endpoint (:mod:`tests.support.rtp_tone`, G.711 over UDP) stands in for the
trunk. Each plays its own tone and detects the other's, so every assertion means audio
crossed a real worker process, both ways. The anchor spawns real worker processes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sip_test_rig.media import DEFAULT_TONES
from sip_test_rig.ports import free_port
from sip_test_rig.procs import children_of
from sip_test_rig.softphone_client import Softphone
from tests.support.phones import registered_phone
from tests.support.rtp_tone import RtpToneEndpoint
from tests.support.ucgate_process import Account, UcgateProcess
from tests.support.webrtc_peer import WebRtcPeer
from tests.support.webrtc_phone import WebRtcPhone
from ucgate.media.anchor import MediaError, MediaKey, MediaProfile
from ucgate.media.embedded import EmbeddedAnchor
from ucgate.sip.sdp import parse_sdp

pytestmark = pytest.mark.interop

TONE_TRUNK, TONE_BROWSER = DEFAULT_TONES[0], DEFAULT_TONES[2]
LISTEN = [TONE_TRUNK, TONE_BROWSER]
#: 1 s of our own 20 ms media clock: long enough for a tone to be detected (200 ms) many
#: times over if it were there.
HELD_WINDOW = 50


class Lost:
    def __init__(self) -> None:
        self.reports: list[tuple[list[MediaKey], str]] = []
        self.event = asyncio.Event()

    def __call__(self, keys: list[MediaKey], reason: str) -> None:
        self.reports.append((keys, reason))
        self.event.set()


@pytest.fixture
async def lost() -> Lost:
    return Lost()


@pytest.fixture
async def dtmf() -> list[tuple[MediaKey, str]]:
    return []


@pytest.fixture
async def anchor(lost: Lost, dtmf: list[tuple[MediaKey, str]]) -> AsyncIterator[EmbeddedAnchor]:
    backend = EmbeddedAnchor(
        max_workers=2,
        calls_per_worker=1,
        log_format="console",
        on_dtmf=lambda key, digit: dtmf.append((key, digit)),
    )
    await backend.start(lost)
    try:
        yield backend
    finally:
        pids = list(backend.worker_pids().values())
        await backend.close()
        for pid in pids:  # close() stops them by PID; make sure none is left behind
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)


async def browser_calls_trunk(
    anchor: EmbeddedAnchor, key: MediaKey, *, codec: str | None = None
) -> tuple[WebRtcPeer, RtpToneEndpoint]:
    browser = WebRtcPeer(TONE_BROWSER, LISTEN, codec=codec)
    trunk = await RtpToneEndpoint(TONE_TRUNK, LISTEN).start()
    rtp_offer = await anchor.offer(key, "a", await browser.offer(), MediaProfile.RTP)
    assert parse_sdp(rtp_offer).media[0].proto == "RTP/AVP", rtp_offer
    trunk.remote_sdp(rtp_offer)
    answer = await anchor.answer(key, "b", trunk.sdp(), MediaProfile.WEBRTC)
    assert parse_sdp(answer).media[0].proto == "UDP/TLS/RTP/SAVPF", answer
    await browser.accept_answer(answer)
    return browser, trunk


async def trunk_calls_browser(
    anchor: EmbeddedAnchor, key: MediaKey, *, codec: str | None = None
) -> tuple[WebRtcPeer, RtpToneEndpoint]:
    browser = WebRtcPeer(TONE_BROWSER, LISTEN, codec=codec)
    trunk = await RtpToneEndpoint(TONE_TRUNK, LISTEN).start()
    webrtc_offer = await anchor.offer(key, "a", trunk.sdp(), MediaProfile.WEBRTC)
    assert b"a=fingerprint" in webrtc_offer and b"a=ice-ufrag" in webrtc_offer
    assert b"a=candidate" in webrtc_offer and b"127.0.0.1" in webrtc_offer
    rtp_answer = await anchor.answer(key, "b", await browser.answer(webrtc_offer), MediaProfile.RTP)
    assert parse_sdp(rtp_answer).media[0].proto == "RTP/AVP", rtp_answer
    trunk.remote_sdp(rtp_answer)
    return browser, trunk


async def close_peers(*peers: WebRtcPeer | RtpToneEndpoint) -> None:
    for peer in peers:
        if isinstance(peer, WebRtcPeer):
            await peer.close()
        else:
            await peer.stop()


async def test_browser_calls_trunk_opus_two_way_audio_hold_resume(
    anchor: EmbeddedAnchor,
) -> None:
    key = MediaKey("call-1", "z9hG4bK1")
    browser, trunk = await browser_calls_trunk(anchor, key)
    try:
        assert b"opus/48000" in browser.pc.remoteDescription.sdp.encode()
        await browser.wait_tone(TONE_TRUNK)
        await trunk.wait_tone(TONE_BROWSER)
        assert anchor.stats()["sessions"] == 1

        # The trunk holds (RFC 3264 §8.4: re-offer sendonly): the browser gets a WebRTC
        # re-offer that is sendonly too and answers recvonly; the trunk's answer says
        # recvonly from the anchor.
        reoffer = await anchor.offer(key, "b", trunk.sdp("sendonly"), MediaProfile.WEBRTC)
        assert parse_sdp(reoffer).direction(0) == "sendonly", reoffer
        browser_answer = await browser.answer(reoffer)
        assert parse_sdp(browser_answer).direction(0) == "recvonly", browser_answer
        rtp_answer = await anchor.answer(key, "a", browser_answer, MediaProfile.RTP)
        assert parse_sdp(rtp_answer).direction(0) == "recvonly", rtp_answer
        trunk.remote_sdp(rtp_answer)

        trunk.reset_audio()
        browser.reset_audio()
        received = trunk.received
        await trunk.wait_sent(HELD_WINDOW)
        # Held: nothing reaches the trunk; the trunk (music on hold) still reaches the
        # browser.
        assert TONE_BROWSER not in trunk.detector.report()["detected"]
        assert trunk.received - received <= 2, "packets in flight at most"
        await browser.wait_tone(TONE_TRUNK)

        # Resume: sendrecv again on both legs, audio back both ways.
        reoffer = await anchor.offer(key, "b", trunk.sdp("sendrecv"), MediaProfile.WEBRTC)
        assert parse_sdp(reoffer).direction(0) == "sendrecv", reoffer
        rtp_answer = await anchor.answer(key, "a", await browser.answer(reoffer), MediaProfile.RTP)
        assert parse_sdp(rtp_answer).direction(0) == "sendrecv", rtp_answer
        trunk.remote_sdp(rtp_answer)
        trunk.reset_audio()
        await trunk.wait_tone(TONE_BROWSER)
    finally:
        await close_peers(browser, trunk)
        await anchor.delete(key)
    assert anchor.stats()["sessions"] == 0


async def test_trunk_calls_browser_pcmu_two_way_audio_hold_resume_dtmf(
    anchor: EmbeddedAnchor, dtmf: list[tuple[MediaKey, str]]
) -> None:
    key = MediaKey("call-2", "z9hG4bK2")
    browser, trunk = await trunk_calls_browser(anchor, key, codec="audio/PCMU")
    try:
        assert b"PCMU/8000" in browser.pc.localDescription.sdp.encode()
        assert b"opus" not in browser.pc.localDescription.sdp.encode()
        await browser.wait_tone(TONE_TRUNK)
        await trunk.wait_tone(TONE_BROWSER)

        # RFC 4733 from the trunk surfaces as a worker event.
        trunk.send_dtmf("5")
        async with asyncio.timeout(5):
            while not dtmf:
                await trunk.wait_sent(1)
        assert dtmf == [(key, "5")]

        # The browser holds: its re-offer is sendonly, the trunk gets sendonly and
        # answers recvonly, the browser's answer says recvonly.
        rtp_offer = await anchor.offer(key, "b", await browser.offer("sendonly"), MediaProfile.RTP)
        assert parse_sdp(rtp_offer).direction(0) == "sendonly", rtp_offer
        trunk.remote_sdp(rtp_offer)
        answer = await anchor.answer(key, "a", trunk.sdp("recvonly"), MediaProfile.WEBRTC)
        assert parse_sdp(answer).direction(0) == "recvonly", answer
        await browser.accept_answer(answer)

        # The trunk plays its tone into the hold anyway: the anchor must not pass it on.
        trunk.ignore_direction = True
        browser.reset_audio()
        trunk.reset_audio()
        sent = trunk.sent
        await trunk.wait_sent(HELD_WINDOW)
        assert trunk.sent - sent >= HELD_WINDOW - 1
        assert TONE_TRUNK not in browser.detector.report()["detected"]
        await trunk.wait_tone(TONE_BROWSER)  # the holder's audio (music) still flows

        rtp_offer = await anchor.offer(key, "b", await browser.offer("sendrecv"), MediaProfile.RTP)
        assert parse_sdp(rtp_offer).direction(0) == "sendrecv", rtp_offer
        trunk.remote_sdp(rtp_offer)
        answer = await anchor.answer(key, "a", trunk.sdp("sendrecv"), MediaProfile.WEBRTC)
        assert parse_sdp(answer).direction(0) == "sendrecv", answer
        await browser.accept_answer(answer)
        trunk.ignore_direction = False
        browser.reset_audio()
        await browser.wait_tone(TONE_TRUNK)
    finally:
        await close_peers(browser, trunk)
        await anchor.delete(key)


async def test_killed_worker_reports_only_its_keys_and_pool_recovers(
    anchor: EmbeddedAnchor, lost: Lost
) -> None:
    key1, key2, key3 = (MediaKey(f"call-{i}", "b") for i in (1, 2, 3))
    peers1 = await browser_calls_trunk(anchor, key1)
    peers2 = await trunk_calls_browser(anchor, key2)
    peers3: tuple[WebRtcPeer, RtpToneEndpoint] | None = None
    try:
        for browser, trunk in (peers1, peers2):
            await browser.wait_tone(TONE_TRUNK)
            await trunk.wait_tone(TONE_BROWSER)
        pid1, pid2 = anchor.worker_pid_of(key1), anchor.worker_pid_of(key2)
        assert pid1 is not None and pid2 is not None and pid1 != pid2

        # Full: two workers of one call each.
        with pytest.raises(MediaError) as full:
            await anchor.offer(key3, "a", await WebRtcPeer(0, LISTEN).offer(), MediaProfile.RTP)
        assert full.value.status == 503

        os.kill(pid1, signal.SIGKILL)
        async with asyncio.timeout(10):
            await lost.event.wait()
        assert [keys for keys, _ in lost.reports] == [[key1]]
        assert anchor.worker_pid_of(key1) is None

        # The other worker's call never stopped.
        assert anchor.worker_pid_of(key2) == pid2
        browser2, trunk2 = peers2
        browser2.reset_audio()
        trunk2.reset_audio()
        await browser2.wait_tone(TONE_TRUNK)
        await trunk2.wait_tone(TONE_BROWSER)

        # The pool serves a new call on a new worker.
        peers3 = await browser_calls_trunk(anchor, key3)
        await peers3[0].wait_tone(TONE_TRUNK)
        await peers3[1].wait_tone(TONE_BROWSER)
        pid3 = anchor.worker_pid_of(key3)
        assert pid3 not in (None, pid1, pid2)
        assert anchor.stats()["workers_lost"] == 1
        assert len(lost.reports) == 1
    finally:
        for peers in (peers1, peers2, peers3):
            if peers is not None:
                await close_peers(*peers)
        for key in (key1, key2, key3):
            await anchor.delete(key)


async def test_unresponsive_worker_is_killed_and_its_keys_reported() -> None:
    lost = Lost()
    backend = EmbeddedAnchor(max_workers=2, calls_per_worker=1, ping_interval=0.2, ping_timeout=1.0)
    await backend.start(lost)
    key = MediaKey("call-frozen", "b")
    browser, trunk = await browser_calls_trunk(backend, key)
    pid = backend.worker_pid_of(key)
    assert pid is not None
    try:
        await browser.wait_tone(TONE_TRUNK)
        # A hung worker (stopped, not dead): its pipe stays open, only the ping notices.
        os.kill(pid, signal.SIGSTOP)
        async with asyncio.timeout(10):
            await lost.event.wait()
        assert [keys for keys, _ in lost.reports] == [[key]]
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # killed and reaped
        async with asyncio.timeout(20):  # min_workers: a replacement comes up
            while not backend.stats()["workers_ready"]:
                await trunk.wait_sent(5)
    finally:
        await close_peers(browser, trunk)
        await backend.delete(key)
        pids = list(backend.worker_pids().values())
        await backend.close()
        for other in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(other, 0)


async def test_unbridgeable_sdp_is_488_and_frees_the_slot(anchor: EmbeddedAnchor) -> None:
    trunk = await RtpToneEndpoint(TONE_TRUNK, LISTEN).start()
    key = MediaKey("call-g729", "b")
    try:
        g729_only = trunk.sdp().replace(b"RTP/AVP 0 101", b"RTP/AVP 18 101")
        with pytest.raises(MediaError) as exc:
            await anchor.offer(key, "a", g729_only, MediaProfile.WEBRTC)
        assert exc.value.status == 488
        assert anchor.stats()["sessions"] == 0
        with pytest.raises(MediaError) as exc:
            await anchor.answer(key, "b", trunk.sdp(), MediaProfile.WEBRTC)
        assert exc.value.status == 500
        await anchor.delete(key)  # idempotent on an unknown key
    finally:
        await trunk.stop()


ORPHAN_SCRIPT = """
import asyncio, sys
from ucgate.media.embedded import EmbeddedAnchor

async def main():
    anchor = EmbeddedAnchor(max_workers=1)
    await anchor.start(lambda keys, reason: None)
    print("WORKERS", *anchor.worker_pids().values(), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_workers_exit_when_ucgate_dies() -> None:
    """A worker whose parent is killed sees its stdin close and exits: no orphaned media
    processes holding ports after a crash of ucgate itself."""
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", ORPHAN_SCRIPT, stdout=asyncio.subprocess.PIPE
    )
    worker_pid = 0
    try:
        assert parent.stdout is not None
        async with asyncio.timeout(30):
            line = b""
            while not line.startswith(b"WORKERS "):  # structlog may print before it
                line = await parent.stdout.readline()
                assert line, "the parent exited before starting its worker"
            worker_pid = int(line.split()[1])
        parent.kill()
        await parent.wait()
        async with asyncio.timeout(10):
            while Path(f"/proc/{worker_pid}").exists():
                await asyncio.sleep(0.05)  # polling another process's exit, bounded
    finally:
        if parent.returncode is None:
            parent.kill()
            await parent.wait()
        if worker_pid and Path(f"/proc/{worker_pid}").exists():
            os.kill(worker_pid, signal.SIGKILL)


# --------------------------------------------------------------------------- through ucgate
# The same backend selected by configuration, driven by ucgate's B2BUA: a browser agent
# (SIP over WebSocket + aiortc) and a pjsua2 trunk from the rig, as in
# test_media_anchor.py (which runs the rtpengine backend).

DOMAIN = "example.test"
ALICE = Account("alice", "alice-Pa55word")
PBX = Account("pbx1", "pbx1-Pa55word")


@pytest.fixture
def node(tmp_path: Path) -> Iterator[UcgateProcess]:
    tail = """
[[dids]]
number = "+15550100"
target = "agent:alice"
[[dial_rules]]
prefix = "+1"
trunk = "pbx1"
[calls]
ring_timeout = 15
[media]
backend = "embedded"
"""
    n = UcgateProcess(
        tmp_path / "n", agents=[ALICE], trunks=[PBX], tail=tail, ws_port=free_port()
    ).start()
    assert n.proc is not None
    # The default min_workers is 0: no worker until the first anchored call needs one.
    workers = children_of(n.proc.pid)
    try:
        assert not workers, workers
        yield n
    finally:
        workers = sorted(set(workers) | set(children_of(n.proc.pid) if n.proc else []))
        n.stop()
        # The workers are ucgate's children: they exit when its pipes close. Check it,
        # and stop any straggler by its PID.
        leftover = [pid for pid in workers if _alive(pid, timeout=5.0)]
        for pid in leftover:
            os.kill(pid, signal.SIGKILL)
        assert not leftover, f"media workers outlived ucgate: {leftover}"


def _alive(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists():
        if time.monotonic() > deadline:
            return True
        time.sleep(0.05)  # polling another process's exit, bounded
    return False


@pytest.fixture
def sip_trunk(node: UcgateProcess) -> Iterator[Softphone]:
    with registered_phone(node, PBX, tone=TONE_TRUNK, auto_answer=200, answer_delay_ms=100) as p:
        yield p


async def ws_browser(node: UcgateProcess) -> WebRtcPhone:
    phone = WebRtcPhone(
        f"ws://127.0.0.1:{node.ws_port}/",
        ALICE.id,
        ALICE.password,
        domain=DOMAIN,
        tone=TONE_BROWSER,
        listen=LISTEN,
    )
    await phone.connect()
    resp = await phone.register()
    assert resp.status == 200, resp
    return phone


def test_through_ucgate_trunk_calls_browser_agent_hold_resume(
    node: UcgateProcess, sip_trunk: Softphone
) -> None:
    async def scenario() -> None:
        alice = await ws_browser(node)
        try:
            call_t = sip_trunk.make_call(f"sip:+15550100@{DOMAIN}")
            invite = await alice.next_request("INVITE")
            assert parse_sdp(invite.body).media[0].proto == "UDP/TLS/RTP/SAVPF", invite.body
            await alice.answer(invite)
            confirmed = await asyncio.to_thread(sip_trunk.wait_call_state, call_t, "confirmed")
            assert confirmed["code"] == 200
            assert node.proc is not None and children_of(node.proc.pid), "no media worker"
            await alice.wait_tone(TONE_TRUNK)
            await asyncio.to_thread(sip_trunk.wait_tone, call_t, TONE_BROWSER, 10)

            sip_trunk.hold(call_t)
            await asyncio.to_thread(
                sip_trunk.wait_call_event, "media_state", call_t, status="local_hold"
            )
            assert parse_sdp(alice.last_reoffer).direction() in ("sendonly", "inactive")
            sip_trunk.resume(call_t)
            await asyncio.to_thread(
                sip_trunk.wait_call_event, "media_state", call_t, status="active"
            )
            alice.reset_audio()
            sip_trunk.reset_audio(call_t)
            await alice.wait_tone(TONE_TRUNK)
            await asyncio.to_thread(sip_trunk.wait_tone, call_t, TONE_BROWSER, 10)

            sip_trunk.hangup(call_t)
            await alice.next_request("BYE")
            assert not alice.errors, alice.errors
        finally:
            await alice.close()

    asyncio.run(scenario())


def test_through_ucgate_browser_agent_calls_out_through_trunk(
    node: UcgateProcess, sip_trunk: Softphone
) -> None:
    async def scenario() -> None:
        alice = await ws_browser(node)
        try:
            resp = await alice.call(f"sip:+15557654321@{DOMAIN}")
            assert resp.status == 200, resp
            assert parse_sdp(resp.body).media[0].proto == "UDP/TLS/RTP/SAVPF", resp.body
            incoming = await asyncio.to_thread(sip_trunk.wait_incoming)
            call_t = int(incoming["call"])
            await alice.wait_tone(TONE_TRUNK)
            await asyncio.to_thread(sip_trunk.wait_tone, call_t, TONE_BROWSER, 10)
            bye = await alice.hangup()
            assert bye.status == 200
            assert await asyncio.to_thread(sip_trunk.wait_call_state, call_t, "disconnected")
        finally:
            await alice.close()

    asyncio.run(scenario())
