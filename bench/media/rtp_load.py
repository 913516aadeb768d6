"""RTP load worker for bench/media: both plain-RTP ends of N bridged calls, in one process.

Each call has two sockets: ``a`` (the "browser" microphone/speaker: it talks plain RTP to
the load generator's rtpengine, which turns it into WebRTC) and ``b`` (the trunk). Every
20 ms each end sends one PCMU frame (RTP PT 0, 160 bytes) whose payload starts with a
magic, the call index, the frame index and the send time (``CLOCK_MONOTONIC`` ns, the same
clock for every process on the host, so one-way delay on loopback is a subtraction). Calls
are spread evenly over the 20 ms tick (a random-looking phase per call, like independent
phones), not sent in one burst.

At the receiving end of both directions it counts, for the frames *due* in the measurement
window: received (unique), lost (never arrived by the end), late and the one-way delays.
A frame is *late* when its delay exceeds the stream's smallest delay by more than
``--late-ms``: it would miss the playout point of a receiver whose jitter buffer holds that
much (a constant delay, e.g. a backend that decodes and re-encodes, is latency, reported
as such, not lateness). It also counts how late *it* sent frames (``send_lag``): when the worker
itself falls behind, the ceiling is the generator's, not the gateway's.

Protocol with the controller (one JSON object per line):

* worker -> ``{"ports": [[a_port, b_port], ...]}`` once its sockets are bound;
* controller -> ``{"remotes": [[[host, a_remote], [host, b_remote]], ...], "start": t,
  "warmup": s, "measure": s}`` (``t`` on the monotonic clock; ``null`` remotes skip a call);
* worker -> ``{"result": {...}}`` after ``start + warmup + measure`` plus a bounded drain.

``BENCH_RTP_DUMP=<file>`` appends every stream's delays (one JSON line per stream) to look at
a distribution by hand.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import select
import socket
import struct
import sys
import time

FRAME_S = 0.020
PAYLOAD_LEN = 160  # PCMU, 8 kHz x 20 ms
MAGIC = 0x55C6A7E1
_HDR = struct.Struct("!BBHII")  # V/P/X/CC, M/PT, seq, timestamp, ssrc
_BODY = struct.Struct("!IIIq")  # magic, call, frame, send time (ns)
# The stamp travels as ASCII hex: every hex digit is a mu-law code that survives a decode
# and re-encode unchanged (only 0x7F and 0xFF, the two zeros, do not), so a backend that
# transcodes G.711 through PCM (embedded) still delivers readable stamps.
_STAMP_LEN = 2 * _BODY.size
_FILL = b"\xff" * (PAYLOAD_LEN - _STAMP_LEN)  # mu-law silence after the stamp
DRAIN_S = 1.0


class Stream:
    """One direction of one call, counted at its receiving end."""

    __slots__ = ("corrupt", "delays", "dup", "late", "received", "seen")

    def __init__(self) -> None:
        self.corrupt = 0  # payload altered on the way (counted as lost)
        self.seen: set[int] = set()
        self.received = 0
        self.late = 0
        self.dup = 0
        self.delays: list[float] = []


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def run(calls: int, late_ms: float) -> None:
    socks: list[tuple[socket.socket, socket.socket]] = []
    for _ in range(calls):
        pair = []
        for _side in "ab":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 18)
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
            pair.append(s)
        socks.append((pair[0], pair[1]))
    print(
        json.dumps({"ports": [[a.getsockname()[1], b.getsockname()[1]] for a, b in socks]}),
        flush=True,
    )
    line = sys.stdin.readline()
    if not line:
        return
    plan = json.loads(line)
    remotes = plan["remotes"]
    start = float(plan["start"])
    warmup = float(plan["warmup"])
    measure = float(plan["measure"])
    first = round(warmup / FRAME_S)
    last = first + round(measure / FRAME_S)  # frames [first, last) are measured
    end_send = start + (last + 5) * FRAME_S

    # by fd: (call, direction index) of the stream received there; a->b is 0, b->a is 1
    fd_stream: dict[int, tuple[int, int]] = {}
    streams = [(Stream(), Stream()) for _ in range(calls)]
    active = [i for i in range(calls) if remotes[i] is not None]
    poller = select.epoll()
    for i in active:
        a, b = socks[i]
        fd_stream[b.fileno()] = (i, 0)  # b receives what a sent
        fd_stream[a.fileno()] = (i, 1)
        poller.register(a.fileno(), select.EPOLLIN)
        poller.register(b.fileno(), select.EPOLLIN)
    by_fd = {s.fileno(): s for pair in socks for s in pair}
    addrs = {
        i: ((remotes[i][0][0], remotes[i][0][1]), (remotes[i][1][0], remotes[i][1][1]))
        for i in active
    }
    # Phase of call i: spread over the tick (golden-ratio stride, so shards interleave).
    heap = [(start + ((i * 0.6180339887) % 1.0) * FRAME_S, i, 0) for i in active]
    heapq.heapify(heap)
    lag_over_10ms = 0
    max_lag = 0.0
    sent = 0
    seqs = [[0, 0] for _ in range(calls)]

    def drain(fd: int) -> None:
        sock = by_fd[fd]
        call, direction = fd_stream[fd]
        st = streams[call][direction]
        while True:
            try:
                data = sock.recv(2048)
            except BlockingIOError:
                return
            except OSError:
                return  # ICMP errors from a peer that is not there yet
            now_ns = time.monotonic_ns()
            if len(data) < 12 + _STAMP_LEN or 200 <= data[1] <= 204:
                continue  # RTCP or junk
            cc = data[0] & 0x0F
            off = 12 + 4 * cc
            if data[0] & 0x10:  # header extension (RFC 3550 §5.3.1)
                off += 4 + 4 * struct.unpack_from("!H", data, off + 2)[0]
            if len(data) < off + _STAMP_LEN:
                continue
            try:
                stamp = bytes.fromhex(data[off : off + _STAMP_LEN].decode("ascii"))
            except ValueError:
                st.corrupt += 1
                continue
            magic, c, frame, sent_ns = _BODY.unpack(stamp)
            if magic != MAGIC or c != call or not first <= frame < last:
                continue
            if frame in st.seen:
                st.dup += 1
                continue
            st.seen.add(frame)
            st.received += 1
            st.delays.append((now_ns - sent_ns) / 1e6)

    deadline = end_send + DRAIN_S
    while True:
        now = time.monotonic()
        if now >= deadline:
            break
        while heap and heap[0][0] <= now and heap[0][0] < end_send:
            due, i, frame = heapq.heappop(heap)
            lag = now - due
            if frame >= first and frame < last:
                max_lag = max(max_lag, lag)
                if lag > 0.010:
                    lag_over_10ms += 1
            a, b = socks[i]
            to_a, to_b = addrs[i]
            ts = frame * PAYLOAD_LEN
            for d, sock, dest in ((0, a, to_a), (1, b, to_b)):
                seq = seqs[i][d] = (seqs[i][d] + 1) & 0xFFFF
                pkt = (
                    _HDR.pack(0x80, 0, seq, ts & 0xFFFFFFFF, 0x10000 + 2 * i + d)
                    + _BODY.pack(MAGIC, i, frame, time.monotonic_ns()).hex().encode()
                    + _FILL
                )
                try:
                    sock.sendto(pkt, dest)
                    sent += 1
                except OSError:
                    pass  # ICMP unreachable reported late on this socket; counted as lost
            heapq.heappush(heap, (due + FRAME_S, i, frame + 1))
        now = time.monotonic()
        nxt = heap[0][0] if heap and heap[0][0] < end_send else deadline
        timeout = max(0.0, min(nxt, deadline) - now)
        for fd, _ in poller.poll(timeout):
            drain(fd)

    expected = last - first
    if os.environ.get("BENCH_RTP_DUMP"):
        with open(os.environ["BENCH_RTP_DUMP"], "a", encoding="ascii") as dump:
            for i, pair in enumerate(streams):
                for d, st in enumerate(pair):
                    dump.write(json.dumps({"call": i, "dir": d, "delays": st.delays}) + "\n")
    for pair in streams:
        for st in pair:
            if st.delays:
                floor = min(st.delays)
                st.late = sum(1 for d in st.delays if d - floor > late_ms)
    per_dir = []
    for direction in (0, 1):
        delays: list[float] = []
        rec = late = dup = corrupt = 0
        worst = 0.0
        for i in active:
            st = streams[i][direction]
            rec += st.received
            late += st.late
            dup += st.dup
            corrupt += st.corrupt
            delays.extend(st.delays)
            bad = (expected - st.received + st.late) / expected
            worst = max(worst, bad)
        delays.sort()
        per_dir.append(
            {
                "direction": "browser->trunk" if direction == 0 else "trunk->browser",
                "expected": expected * len(active),
                "received": rec,
                "lost": expected * len(active) - rec,
                "late": late,
                "duplicates": dup,
                "corrupt": corrupt,
                "worst_call_bad_ratio": round(worst, 5),
                "delay_ms_min": delays[0] if delays else None,
                "delay_ms_p50": _percentile(delays, 0.5),
                "delay_ms_p99": _percentile(delays, 0.99),
                "delay_ms_max": delays[-1] if delays else None,
            }
        )
    result = {
        "calls": len(active),
        "frames_per_stream": expected,
        "directions": per_dir,
        "packets_sent": sent,
        "send_lag_over_10ms": lag_over_10ms,
        "send_lag_max_ms": round(max_lag * 1000, 2),
        "cpu_seconds": sum(os.times()[:2]),
    }
    print(json.dumps({"result": result}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, required=True)
    parser.add_argument("--late-ms", type=float, default=60.0)
    args = parser.parse_args()
    run(args.calls, args.late_ms)


if __name__ == "__main__":
    main()
