"""A pjsua2 softphone driven by JSON lines: ``python -m sip_test_rig.softphone --json-control``.

One process owns one pjsua2 Endpoint on one thread (threadCnt=0, ``libHandleEvents`` polled from the
main loop), so pj is never called from a thread it does not know (that aborts the process, see
/work/shared/PJSUA2_NOTES.md). Commands arrive one JSON object per line on stdin; each gets exactly
one reply line on stdout, and asynchronous events are JSON lines on stdout too:

    -> {"cmd": "register", "id": 1, "server": "127.0.0.1:5060", "transport": "udp",
        "user": "alice", "password": "...", "domain": "example.test", "expires": 300}
    <- {"reply": "register", "id": 1, "ok": true, "account": "alice@example.test"}
    <- {"event": "reg_state", "account": "alice@example.test", "code": 200, "reason": "OK",
        "expires": 300, "active": true}

Presence (RFC 3856 / RFC 3903 through pjsua2's Buddy and PUBLISH support):

    -> {"cmd": "register", ..., "proxy": true}   # route every request through the server
    -> {"cmd": "subscribe_buddy", "uri": "sip:bob@example.test", "account": "alice@example.test"}
    <- {"reply": "subscribe_buddy", "ok": true, "account": "...", "uri": "sip:bob@example.test"}
    <- {"event": "buddy_state", "account": "...", "uri": "sip:bob@example.test",
        "status": "online", "status_text": "Online", "activity": "busy", "note": "...",
        "sub_state": "ACTIVE", "sub_term_reason": "", "sub_term_code": 200}
    -> {"cmd": "publish_presence", "status": "online", "activity": "busy", "note": "on a call"}
    -> {"cmd": "unsubscribe_buddy", "uri": "..."} / {"cmd": "unpublish"}

A presentity's URI has the server's domain (``sip:bob@example.test``), which does not resolve:
register with ``"proxy": true`` (or a proxy URI) so SUBSCRIBE and PUBLISH are sent to the server
(RFC 3261 §8.1.2 outbound proxy). Commands live in a table (``Controller.commands``).
Passwords are never logged or echoed.

Calls with real audio (see ``sip_test_rig/media.py``): every call plays this process's tone
(``--tone``, or ``tone`` on ``make_call`` / ``account`` / ``register``) and runs a tone detector
on what it receives; codecs are limited to ``--codec`` (PCMU/8000/1 by default) so every leg
speaks G.711 like a trunk.

    -> {"cmd": "account", "user": "b", "auto_answer": 200}      # local account, no REGISTER
    <- {"reply": "account", "ok": true, "account": "b@127.0.0.1", "contact": "sip:b@127.0.0.1:P"}
    -> {"cmd": "make_call", "uri": "sip:b@127.0.0.1:P", "headers": {"X-UCGate-Session": "s1"}}
    <- {"reply": "make_call", "ok": true, "call": 1}
    <- {"event": "call_state", "call": 1, "state": "early", "code": 180, "reason": "Ringing"}
    <- {"event": "call_state", "call": 1, "state": "confirmed", "code": 200, ...}
    <- {"event": "media_state", "call": 1, "status": "active"}
    <- {"event": "tone_detected", "call": 1, "freq": 1800}
    -> {"cmd": "audio_report", "call": 1}  /  {"cmd": "reset_audio", "call": 1}
    -> {"cmd": "hold"|"resume"|"hangup", "call": 1}
    -> {"cmd": "transfer", "call": 1, "to": "sip:c@..."}                    # blind REFER
    -> {"cmd": "transfer_attended", "call": 1, "target_call": 2}   # REFER with Replaces
    -> {"cmd": "dial_dtmf", "call": 1, "digits": "12#", "method": "rfc4733"|"info"}
    <- {"event": "dtmf_received", "call": 1, "digit": "1", "method": "rfc4733"}
    <- {"event": "incoming_call", "call": 2, "account": "...", "remote_uri": "...",
        "headers": {"X-UCGate-Session": "s1"}}
    -> {"cmd": "answer", "call": 2, "code": 200}

pjsua2 is built with at most 4 calls per process (PJSUA2_NOTES.md): a 5th ``make_call`` fails
with PJ_ETOOMANY; tests needing more start more softphones.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from sip_test_rig.media import DEFAULT_TONES, ToneDetector, vector_bytes

JsonObj = dict[str, Any]
_TRANSPORTS = ("udp", "tcp")
_STATUSES = ("online", "offline")
_ACTIVITIES = ("unknown", "away", "busy")
_DTMF_METHODS = ("rfc4733", "info")
#: Headers of an incoming INVITE reported in ``incoming_call`` (the rest is noise to tests).
_REPORTED_HEADER_PREFIXES = ("x-ucgate-", "user-to-user", "replaces", "referred-by")
#: Detector clock: 8 kHz PCM16, 20 ms frames (160 samples, 50 Hz bins); the bridge resamples.
_DETECTOR_CLOCK = 8000


@dataclass
class CallEntry:
    """One call of this process: the pjsua2 objects kept alive for it, and its audio."""

    rig_id: int
    account: str
    call: Any
    tone: int
    detector: ToneDetector
    tone_gen: Any = None
    rx_port: Any = None
    ended: bool = False


class CommandError(Exception):
    """A command that cannot be carried out; its message is the reply's ``error``."""


def _redirect_native_stdout() -> TextIO:
    """Keep fd 1 for JSON only.

    pjlib prints a few lines to fd 1 in ``libCreate`` before any log writer exists; those would
    corrupt the JSON stream. Duplicate the real stdout for JSON and point fd 1 at stderr.
    """
    json_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(json_fd, "w", buffering=1, encoding="utf-8")


class Controller:
    """Owns the Endpoint, its transports and accounts; executes commands; emits events."""

    def __init__(
        self,
        out: TextIO,
        *,
        log_level: int,
        msg_logging: bool,
        tone: int = DEFAULT_TONES[0],
        watch: tuple[int, ...] = DEFAULT_TONES,
        codecs: tuple[str, ...] = ("PCMU/8000/1",),
    ) -> None:
        import pjsua2 as pj  # imported here: the module must load after fd 1 is redirected

        self.pj = pj
        self.out = out
        self.quitting = False
        self.tone = tone
        self.watch = tuple(sorted({*watch, tone}))
        # rig call id -> CallEntry. The entry keeps the Call, its ToneGenerator and detector port
        # referenced: an unreferenced Call is hung up, an unreferenced port leaves the bridge.
        self.calls: dict[int, CallEntry] = {}
        self._next_call = 1
        # Per account: (final code or None, delay ms, tone) for incoming calls.
        self.answer_policy: dict[str, tuple[int | None, int, int]] = {}
        # (monotonic deadline, rig call id, status code): delayed answers run by ``tick``.
        self.timers: list[tuple[float, int, int]] = []
        # pj objects whose release must wait until no pj callback is on the stack.
        self.graveyard: list[Any] = []
        self.accounts: dict[str, Any] = {}
        # The AccountConfig each account was created with: presence commands change a field
        # (publishEnabled) and apply it with Account.modify.
        self.account_configs: dict[str, Any] = {}
        # (account key, buddy URI) -> pjsua2 Buddy. Every Buddy stays referenced here until
        # shutdown: an unreferenced one is deleted by SWIG and its subscription with it.
        self.buddies: dict[tuple[str, str], Any] = {}
        self.commands: dict[str, Callable[[JsonObj], JsonObj]] = {
            "register": self.cmd_register,
            "unregister": self.cmd_unregister,
            "subscribe_buddy": self.cmd_subscribe_buddy,
            "unsubscribe_buddy": self.cmd_unsubscribe_buddy,
            "buddy_info": self.cmd_buddy_info,
            "publish_presence": self.cmd_publish_presence,
            "unpublish": self.cmd_unpublish,
            "info": self.cmd_info,
            "quit": self.cmd_quit,
            "account": self.cmd_account,
            "make_call": self.cmd_make_call,
            "answer": self.cmd_answer,
            "hangup": self.cmd_hangup,
            "hold": self.cmd_hold,
            "resume": self.cmd_resume,
            "transfer": self.cmd_transfer,
            "transfer_attended": self.cmd_transfer_attended,
            "dial_dtmf": self.cmd_dial_dtmf,
            "audio_report": self.cmd_audio_report,
            "reset_audio": self.cmd_reset_audio,
            "calls": self.cmd_calls,
        }
        _init_names(pj)
        self.ep = pj.Endpoint()
        self.ep.libCreate()
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = False
        cfg.uaConfig.userAgent = "ucgate-rig-pjsua2"
        cfg.uaConfig.maxCalls = 4  # the compiled-in PJSUA_MAX_CALLS; more is silently clamped
        # No echo canceller or VAD: the tones must arrive as sent (VAD would cut "silence").
        cfg.medConfig.ecTailLen = 0
        cfg.medConfig.noVad = True
        # The writer must outlive the endpoint (a collected writer segfaults pjlib).
        self.log_writer = _make_log_writer(pj)
        cfg.logConfig.writer = self.log_writer
        cfg.logConfig.level = log_level
        cfg.logConfig.consoleLevel = log_level
        cfg.logConfig.msgLogging = 1 if msg_logging else 0
        cfg.logConfig.decor = 0
        self.ep.libInit(cfg)
        self.transport_ids: dict[str, int] = {}
        self.transport_ports: dict[str, int] = {}
        for name, kind in (("udp", pj.PJSIP_TRANSPORT_UDP), ("tcp", pj.PJSIP_TRANSPORT_TCP)):
            tcfg = pj.TransportConfig()
            tcfg.port = 0
            tcfg.boundAddress = "127.0.0.1"
            tid = self.ep.transportCreate(kind, tcfg)
            self.transport_ids[name] = tid
            self.transport_ports[name] = int(self.ep.transportGetInfo(tid).localName.split(":")[-1])
        self.ep.audDevManager().setNullDev()
        self.ep.libStart()
        self._set_codecs(codecs)

    def _set_codecs(self, codecs: tuple[str, ...]) -> None:
        """Offer only ``codecs`` (in order), plus telephone-event for RFC 4733 DTMF."""
        wanted = {c.lower(): 255 - i for i, c in enumerate(codecs)}
        for info in self.ep.codecEnum2():
            cid = str(info.codecId)
            self.ep.codecSetPriority(cid, wanted.get(cid.lower(), 0))

    # -- output ---------------------------------------------------------------------------

    def emit(self, obj: JsonObj) -> None:
        self.out.write(json.dumps(obj, separators=(",", ":")) + "\n")
        self.out.flush()

    # -- commands -------------------------------------------------------------------------

    def dispatch(self, line: str) -> None:
        try:
            cmd = json.loads(line)
            if not isinstance(cmd, dict) or not isinstance(cmd.get("cmd"), str):
                raise CommandError("expected a JSON object with a string 'cmd'")
        except (ValueError, CommandError) as exc:
            self.emit({"reply": None, "ok": False, "error": f"bad command: {exc}"})
            return
        name = cmd["cmd"]
        reply: JsonObj = {"reply": name}
        if "id" in cmd:
            reply["id"] = cmd["id"]
        handler = self.commands.get(name)
        try:
            if handler is None:
                raise CommandError(f"unknown command {name!r}")
            reply.update(handler(cmd))
            reply["ok"] = True
        except CommandError as exc:
            reply.update(ok=False, error=str(exc))
        except self.pj.Error as exc:
            reply.update(ok=False, error=f"pjsua2: {exc.info()}")
        self.emit(reply)

    def cmd_register(self, cmd: JsonObj) -> JsonObj:
        pj = self.pj
        server = _require(cmd, "server", str)
        user = _require(cmd, "user", str)
        domain = _require(cmd, "domain", str)
        password = _require(cmd, "password", str)
        transport = cmd.get("transport", "udp")
        if transport not in _TRANSPORTS:
            raise CommandError(f"transport must be one of {_TRANSPORTS}")
        expires = int(cmd.get("expires", 300))
        key = f"{user}@{domain}"
        acfg = pj.AccountConfig()
        acfg.idUri = f"sip:{user}@{domain}"
        # Request-URI: the registrar's address unless the caller names one (RFC 3261 §10.2
        # allows either; a phone configured with an IP as "server" sends the IP).
        acfg.regConfig.registrarUri = cmd.get(
            "registrar_uri", f"sip:{server};transport={transport}"
        )
        acfg.regConfig.timeoutSec = expires
        # A failed registration is reported, not retried behind the test's back.
        acfg.regConfig.retryIntervalSec = 0
        acfg.sipConfig.transportId = self.transport_ids[transport]
        # realm "*" answers any realm; ucgate's realm is the domain, Kamailio's the To domain.
        acfg.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", user, 0, password))
        acfg.natConfig.sipOutboundUse = int(bool(cmd.get("outbound", False)))
        acfg.natConfig.contactRewriteUse = 0
        acfg.natConfig.viaRewriteUse = 0
        acfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
        acfg.mediaConfig.transportConfig.port = 0
        acfg.mediaConfig.transportConfig.portRange = 0
        proxy = cmd.get("proxy", False)
        if proxy is True:
            proxy = f"sip:{server};lr;transport={transport}"
        if isinstance(proxy, str) and proxy:
            # Outbound proxy: SUBSCRIBE/PUBLISH to sip:user@<domain> reach the server without DNS.
            acfg.sipConfig.proxies.append(proxy)
        elif proxy is not False:
            raise CommandError("'proxy' must be true, false or a SIP URI")
        acfg.presConfig.publishEnabled = bool(cmd.get("publish", False))
        self.account_configs[key] = acfg
        self._set_answer_policy(key, cmd)
        existing = self.accounts.get(key)
        if existing is not None:
            # Same identity again: reconfigure in place, which re-registers with the new settings.
            existing.modify(acfg)
            return {"account": key}
        account = _make_account(pj, self, key)
        account.create(acfg)
        self.accounts[key] = account
        return {"account": key}

    def cmd_unregister(self, cmd: JsonObj) -> JsonObj:
        key = self._account_key(cmd)
        self.accounts[key].setRegistration(False)
        return {"account": key}

    def cmd_subscribe_buddy(self, cmd: JsonObj) -> JsonObj:
        """SUBSCRIBE to ``uri``'s presence (RFC 3856); ``buddy_state`` events follow."""
        pj = self.pj
        key = self._account_key(cmd)
        uri = _require(cmd, "uri", str)
        existing = self.buddies.get((key, uri))
        if existing is not None:
            # pjsua refuses a second buddy with the same URI: resubscribe the one we have.
            existing.subscribePresence(True)
            return {"account": key, "uri": uri}
        bcfg = pj.BuddyConfig()
        bcfg.uri = uri
        bcfg.subscribe = True
        buddy = _make_buddy(pj, self, key, uri)
        buddy.create(self.accounts[key], bcfg)
        self.buddies[(key, uri)] = buddy
        return {"account": key, "uri": uri}

    def cmd_unsubscribe_buddy(self, cmd: JsonObj) -> JsonObj:
        """SUBSCRIBE with Expires: 0 (RFC 6665 §4.1.2.3); the final NOTIFY ends it."""
        key, uri, buddy = self._buddy(cmd)
        buddy.subscribePresence(False)
        return {"account": key, "uri": uri}

    def cmd_buddy_info(self, cmd: JsonObj) -> JsonObj:
        key, uri, buddy = self._buddy(cmd)
        return self._buddy_fields(key, uri, buddy)

    def cmd_publish_presence(self, cmd: JsonObj) -> JsonObj:
        """PUBLISH this account's state (RFC 3903) as PIDF with an RPID activity (RFC 4480)."""
        pj = self.pj
        key = self._account_key(cmd)
        status = cmd.get("status", "online")
        activity = cmd.get("activity", "unknown")
        note = cmd.get("note", "")
        if status not in _STATUSES:
            raise CommandError(f"status must be one of {_STATUSES}")
        if activity not in _ACTIVITIES:
            raise CommandError(f"activity must be one of {_ACTIVITIES}")
        if not isinstance(note, str):
            raise CommandError("'note' must be a string")
        ps = pj.PresenceStatus()
        ps.status = (
            pj.PJSUA_BUDDY_STATUS_ONLINE if status == "online" else pj.PJSUA_BUDDY_STATUS_OFFLINE
        )
        ps.activity = {
            "unknown": pj.PJRPID_ACTIVITY_UNKNOWN,
            "away": pj.PJRPID_ACTIVITY_AWAY,
            "busy": pj.PJRPID_ACTIVITY_BUSY,
        }[activity]
        ps.note = note
        # Stored first: with publishing already on, this sends the PUBLISH (modify, refresh by
        # pjsip's publication with SIP-If-Match); otherwise it becomes the initial document.
        self.accounts[key].setOnlineStatus(ps)
        acfg = self.account_configs[key]
        if not acfg.presConfig.publishEnabled:
            # pjsua starts a publication after a successful registration: modify() re-registers
            # and the initial PUBLISH carries the status just set.
            acfg.presConfig.publishEnabled = True
            self.accounts[key].modify(acfg)
        return {"account": key, "status": status, "activity": activity}

    def cmd_unpublish(self, cmd: JsonObj) -> JsonObj:
        """Remove the published state: PUBLISH with Expires: 0 (RFC 3903 §4.4)."""
        key = self._account_key(cmd)
        acfg = self.account_configs[key]
        if not acfg.presConfig.publishEnabled:
            raise CommandError(f"account {key!r} is not publishing")
        acfg.presConfig.publishEnabled = False
        self.accounts[key].modify(acfg)
        return {"account": key}

    def _buddy(self, cmd: JsonObj) -> tuple[str, str, Any]:
        key = self._account_key(cmd)
        uri = _require(cmd, "uri", str)
        buddy = self.buddies.get((key, uri))
        if buddy is None:
            raise CommandError(f"no buddy {uri!r} on account {key!r}")
        return key, uri, buddy

    def _buddy_fields(self, key: str, uri: str, buddy: Any) -> JsonObj:
        pj = self.pj
        info = buddy.getInfo()
        pres = info.presStatus
        return {
            "account": key,
            "uri": uri,
            "status": {
                pj.PJSUA_BUDDY_STATUS_ONLINE: "online",
                pj.PJSUA_BUDDY_STATUS_OFFLINE: "offline",
            }.get(int(pres.status), "unknown"),
            "status_text": str(pres.statusText),
            "activity": {
                pj.PJRPID_ACTIVITY_AWAY: "away",
                pj.PJRPID_ACTIVITY_BUSY: "busy",
            }.get(int(pres.activity), "unknown"),
            "note": str(pres.note),
            # pjsip's names: NULL, SENT, ACCEPTED, PENDING, ACTIVE, TERMINATED, UNKNOWN.
            "sub_state": str(info.subStateName),
            "sub_term_reason": str(info.subTermReason),
            "sub_term_code": int(info.subTermCode),
        }

    # -- calls ----------------------------------------------------------------------------

    def _set_answer_policy(self, key: str, cmd: JsonObj) -> None:
        code = cmd.get("auto_answer")
        if code is not None and (not isinstance(code, int) or not 180 <= code <= 699):
            raise CommandError("'auto_answer' must be a status code (180-699) or null")
        delay = int(cmd.get("answer_delay_ms", 0))
        tone = int(cmd.get("tone", self.tone))
        self.answer_policy[key] = (code, max(0, delay), tone)

    def cmd_account(self, cmd: JsonObj) -> JsonObj:
        """A local account that does not register: it receives calls sent to its contact
        ``sip:<user>@127.0.0.1:<udp port>`` and places calls directly (or via ``proxy``)."""
        pj = self.pj
        user = _require(cmd, "user", str)
        domain = str(cmd.get("domain", "127.0.0.1"))
        key = f"{user}@{domain}"
        if key in self.accounts:
            raise CommandError(f"account {key!r} exists")
        acfg = pj.AccountConfig()
        acfg.idUri = f"sip:{user}@{domain}"
        acfg.sipConfig.transportId = self.transport_ids["udp"]
        if "password" in cmd:
            acfg.sipConfig.authCreds.append(
                pj.AuthCredInfo("digest", "*", user, 0, _require(cmd, "password", str))
            )
        proxy = cmd.get("proxy")
        if isinstance(proxy, str) and proxy:
            acfg.sipConfig.proxies.append(proxy)
        acfg.natConfig.contactRewriteUse = 0
        acfg.natConfig.viaRewriteUse = 0
        acfg.natConfig.sdpNatRewriteUse = 0
        acfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
        acfg.mediaConfig.transportConfig.port = 0
        acfg.mediaConfig.transportConfig.portRange = 0
        self._set_answer_policy(key, cmd)
        account = _make_account(pj, self, key)
        account.create(acfg)
        self.accounts[key] = account
        self.account_configs[key] = acfg
        return {"account": key, "contact": f"sip:{user}@127.0.0.1:{self.transport_ports['udp']}"}

    def _new_entry(self, key: str, call: Any, tone: int) -> CallEntry:
        rig_id = self._next_call
        self._next_call += 1
        detector = ToneDetector(self.watch, clock_rate=_DETECTOR_CLOCK)
        entry = CallEntry(rig_id=rig_id, account=key, call=call, tone=tone, detector=detector)
        self.calls[rig_id] = entry
        return entry

    def _entry(self, cmd: JsonObj, name: str = "call") -> CallEntry:
        rig_id = cmd.get(name)
        if not isinstance(rig_id, int) or rig_id not in self.calls:
            raise CommandError(f"no call {rig_id!r}")
        entry = self.calls[rig_id]
        if entry.ended and name == "call" and cmd.get("cmd") not in ("audio_report",):
            raise CommandError(f"call {rig_id} has ended")
        return entry

    def cmd_make_call(self, cmd: JsonObj) -> JsonObj:
        pj = self.pj
        key = self._account_key(cmd)
        uri = _require(cmd, "uri", str)
        headers = cmd.get("headers", {})
        if not isinstance(headers, dict):
            raise CommandError("'headers' must be an object")
        tone = int(cmd.get("tone", self.answer_policy.get(key, (None, 0, self.tone))[2]))
        call = _make_call(pj, self, self.accounts[key])
        entry = self._new_entry(key, call, tone)
        call.rig_id = entry.rig_id
        prm = pj.CallOpParam(True)
        for name, value in headers.items():
            hdr = pj.SipHeader()
            hdr.hName = str(name)
            hdr.hValue = str(value)
            prm.txOption.headers.append(hdr)
        try:
            call.makeCall(uri, prm)
        except pj.Error:
            del self.calls[entry.rig_id]
            raise
        return {"call": entry.rig_id}

    def cmd_answer(self, cmd: JsonObj) -> JsonObj:
        entry = self._entry(cmd)
        code = int(cmd.get("code", 200))
        self._answer(entry, code)
        return {"call": entry.rig_id, "code": code}

    def _answer(self, entry: CallEntry, code: int) -> None:
        prm = self.pj.CallOpParam(True)
        prm.statusCode = code
        entry.call.answer(prm)

    def cmd_hangup(self, cmd: JsonObj) -> JsonObj:
        entry = self._entry(cmd)
        prm = self.pj.CallOpParam(True)
        # 0 lets pjsua pick: CANCEL before a final response, 603 to an incoming, BYE after.
        prm.statusCode = int(cmd.get("code", 0))
        entry.call.hangup(prm)
        return {"call": entry.rig_id}

    def cmd_hold(self, cmd: JsonObj) -> JsonObj:
        """re-INVITE with a=sendonly (RFC 3264 §8.4)."""
        entry = self._entry(cmd)
        entry.call.setHold(self.pj.CallOpParam(True))
        return {"call": entry.rig_id}

    def cmd_resume(self, cmd: JsonObj) -> JsonObj:
        """re-INVITE with a=sendrecv again."""
        entry = self._entry(cmd)
        prm = self.pj.CallOpParam(True)
        prm.opt.flag = self.pj.PJSUA_CALL_UNHOLD
        entry.call.reinvite(prm)
        return {"call": entry.rig_id}

    def cmd_transfer(self, cmd: JsonObj) -> JsonObj:
        """Blind transfer: REFER, Refer-To ``to`` (RFC 3515); progress in ``transfer_status``."""
        entry = self._entry(cmd)
        entry.call.xfer(_require(cmd, "to", str), self.pj.CallOpParam(True))
        return {"call": entry.rig_id}

    def cmd_transfer_attended(self, cmd: JsonObj) -> JsonObj:
        """Attended transfer: REFER to ``call``'s peer whose Refer-To carries Replaces naming
        ``target_call``'s dialog (RFC 3891 §3, RFC 5589 §7)."""
        entry = self._entry(cmd)
        target = self._entry(cmd, "target_call")
        entry.call.xferReplaces(target.call, self.pj.CallOpParam(True))
        return {"call": entry.rig_id, "target_call": target.rig_id}

    def cmd_dial_dtmf(self, cmd: JsonObj) -> JsonObj:
        pj = self.pj
        entry = self._entry(cmd)
        digits = _require(cmd, "digits", str)
        method = cmd.get("method", "rfc4733")
        if method not in _DTMF_METHODS:
            raise CommandError(f"method must be one of {_DTMF_METHODS}")
        if not digits or any(d not in "0123456789*#ABCDabcd" for d in digits):
            raise CommandError("digits must be 0-9, *, #, A-D")
        prm = pj.CallSendDtmfParam()
        prm.digits = digits
        prm.method = (
            pj.PJSUA_DTMF_METHOD_RFC2833 if method == "rfc4733" else pj.PJSUA_DTMF_METHOD_SIP_INFO
        )
        entry.call.sendDtmf(prm)
        return {"call": entry.rig_id, "digits": digits, "method": method}

    def cmd_audio_report(self, cmd: JsonObj) -> JsonObj:
        entry = self._entry(cmd)
        return {"call": entry.rig_id, "tone": entry.tone, **entry.detector.report()}

    def cmd_reset_audio(self, cmd: JsonObj) -> JsonObj:
        entry = self._entry(cmd)
        entry.detector.reset()
        return {"call": entry.rig_id}

    def cmd_calls(self, cmd: JsonObj) -> JsonObj:
        out = {}
        for rig_id, entry in self.calls.items():
            state = "disconnected"
            if not entry.ended:
                try:
                    state = _STATE_NAMES.get(int(entry.call.getInfo().state), "unknown")
                except self.pj.Error:
                    state = "gone"
            out[str(rig_id)] = {"account": entry.account, "state": state, "tone": entry.tone}
        return {"calls": out}

    # -- call callbacks (inside libHandleEvents, on this thread) ----------------------------

    def on_incoming_call(self, key: str, prm: Any) -> None:
        code, delay, tone = self.answer_policy.get(key, (None, 0, self.tone))
        call = _make_call(self.pj, self, self.accounts[key], prm.callId)
        entry = self._new_entry(key, call, tone)
        call.rig_id = entry.rig_id
        info = call.getInfo()
        self.emit(
            {
                "event": "incoming_call",
                "call": entry.rig_id,
                "account": key,
                "remote_uri": str(info.remoteUri),
                "local_uri": str(info.localUri),
                "request_uri": _request_uri(str(prm.rdata.wholeMsg)),
                "headers": _reported_headers(str(prm.rdata.wholeMsg)),
            }
        )
        if code is not None and code >= 300 and delay == 0:
            self._answer(entry, code)
            return
        self._answer(entry, 180)
        if code is not None and code != 180:
            self.timers.append((time.monotonic() + delay / 1000, entry.rig_id, code))

    def on_call_state(self, entry: CallEntry) -> None:
        info = entry.call.getInfo()
        state = _STATE_NAMES.get(int(info.state), "unknown")
        self.emit(
            {
                "event": "call_state",
                "call": entry.rig_id,
                "state": state,
                "code": int(info.lastStatusCode),
                "reason": str(info.lastReason),
                "remote_uri": str(info.remoteUri),
                "role": "caller" if int(info.role) == self.pj.PJSIP_ROLE_UAC else "callee",
            }
        )
        if state == "disconnected":
            self._release(entry)

    def _release(self, entry: CallEntry) -> None:
        """Unwire the call's audio; the pj objects die later, outside this callback."""
        entry.ended = True
        for media in (entry.tone_gen, entry.rx_port):
            if media is not None:
                self.graveyard.append(media)
        if entry.tone_gen is not None:
            entry.tone_gen.stop()
        self.graveyard.append(entry.call)
        entry.tone_gen = None
        entry.rx_port = None

    def on_call_media_state(self, entry: CallEntry) -> None:
        pj = self.pj
        info = entry.call.getInfo()
        statuses = []
        for media in info.media:
            if int(media.type) != pj.PJMEDIA_TYPE_AUDIO:
                continue
            status = int(media.status)
            statuses.append(_MEDIA_STATUS.get(status, "unknown"))
            if status in (
                pj.PJSUA_CALL_MEDIA_ACTIVE,
                pj.PJSUA_CALL_MEDIA_LOCAL_HOLD,
                pj.PJSUA_CALL_MEDIA_REMOTE_HOLD,
            ):
                self._wire_audio(entry, int(media.index))
        self.emit(
            {
                "event": "media_state",
                "call": entry.rig_id,
                "status": statuses[0] if statuses else "none",
                "statuses": statuses,
            }
        )

    def _wire_audio(self, entry: CallEntry, index: int) -> None:
        """Tone generator -> call, call -> detector port, both through the conference bridge."""
        pj = self.pj
        aud = entry.call.getAudioMedia(index)
        # Rewired on every media update: a re-INVITE (hold, resume) may recreate the stream and
        # its bridge port, dropping earlier connections; startTransmit on a live one is a no-op.
        if entry.tone_gen is None:
            gen = pj.ToneGenerator()
            gen.createToneGenerator(_DETECTOR_CLOCK, 1)
            desc = pj.ToneDesc()
            desc.freq1 = entry.tone
            desc.freq2 = 0
            # One long burst, looped: the longest on-time the 16-bit field holds, no gap.
            desc.on_msec = 30000
            desc.off_msec = 0
            desc.volume = 0
            tones = pj.ToneDescVector()
            tones.append(desc)
            gen.play(tones, True)
            entry.tone_gen = gen
        if entry.rx_port is None:
            port = _make_rx_port(pj, entry.detector)
            fmt = pj.MediaFormatAudio()
            fmt.init(pj.PJMEDIA_FORMAT_PCM, _DETECTOR_CLOCK, 1, 20000, 16)
            port.createPort(f"rx{entry.rig_id}", fmt)
            entry.rx_port = port
        entry.tone_gen.startTransmit(aud)
        aud.startTransmit(entry.rx_port)

    def on_dtmf(self, entry: CallEntry, digit: str, method: int) -> None:
        name = "info" if method == self.pj.PJSUA_DTMF_METHOD_SIP_INFO else "rfc4733"
        self.emit({"event": "dtmf_received", "call": entry.rig_id, "digit": digit, "method": name})

    def on_transfer_request(self, entry: CallEntry, prm: Any) -> None:
        """We are the transferee: accept (202) and let pjsua place the new call, which gets a
        rig id of its own (``new_call``) so its state and audio are reported like any call."""
        call = _make_call(self.pj, self, self.accounts[entry.account])
        new = self._new_entry(entry.account, call, entry.tone)
        call.rig_id = new.rig_id
        prm.newCall = call
        self.emit(
            {
                "event": "transfer_request",
                "call": entry.rig_id,
                "to": str(prm.dstUri),
                "new_call": new.rig_id,
            }
        )

    def on_transfer_status(self, entry: CallEntry, prm: Any) -> None:
        self.emit(
            {
                "event": "transfer_status",
                "call": entry.rig_id,
                "code": int(prm.statusCode),
                "reason": str(prm.reason),
                "final": bool(prm.finalNotify),
            }
        )

    def on_call_replaced(self, entry: CallEntry, prm: Any) -> None:
        """An INVITE with Replaces took over ``entry``'s dialog (RFC 3891 §3)."""
        call = _make_call(self.pj, self, self.accounts[entry.account], prm.newCallId)
        new = self._new_entry(entry.account, call, entry.tone)
        call.rig_id = new.rig_id
        prm.newCall = call
        self.emit({"event": "call_replaced", "call": entry.rig_id, "new_call": new.rig_id})

    def tick(self) -> None:
        """Work that must not run inside a pj callback: timers, tone events, releases."""
        now = time.monotonic()
        due = [t for t in self.timers if t[0] <= now]
        if due:
            self.timers = [t for t in self.timers if t[0] > now]
            for _, rig_id, code in due:
                entry = self.calls.get(rig_id)
                if entry is not None and not entry.ended:
                    try:
                        self._answer(entry, code)
                    except self.pj.Error as exc:
                        print(f"delayed answer failed: {exc.info()}", file=sys.stderr)
        for entry in self.calls.values():
            for freq in entry.detector.take_new_detections():
                self.emit({"event": "tone_detected", "call": entry.rig_id, "freq": freq})
        if self.graveyard:
            self.graveyard.clear()

    def cmd_info(self, cmd: JsonObj) -> JsonObj:
        accounts = {}
        for key, account in self.accounts.items():
            info = account.getInfo()
            accounts[key] = {
                "active": bool(info.regIsActive),
                "code": int(info.regStatus),
                "expires": int(info.regExpiresSec),
            }
        return {
            "pid": os.getpid(),
            "udp_port": self.transport_ports["udp"],
            "tcp_port": self.transport_ports["tcp"],
            "accounts": accounts,
        }

    def cmd_quit(self, cmd: JsonObj) -> JsonObj:
        self.quitting = True
        return {}

    def _account_key(self, cmd: JsonObj) -> str:
        if "account" in cmd:
            key = str(cmd["account"])
        elif "user" in cmd:
            key = f"{cmd['user']}@{cmd.get('domain', '')}"
            if key not in self.accounts:
                matches = [k for k in self.accounts if k.startswith(f"{cmd['user']}@")]
                key = matches[0] if len(matches) == 1 else key
        elif len(self.accounts) == 1:
            key = next(iter(self.accounts))
        else:
            raise CommandError("name the account ('account' or 'user')")
        if key not in self.accounts:
            raise CommandError(f"no account {key!r}")
        return key

    # -- callbacks (run inside libHandleEvents, on this thread) -----------------------------

    def on_reg_state(self, key: str, prm: Any) -> None:
        account = self.accounts.get(key)
        info = account.getInfo() if account is not None else None
        self.emit(
            {
                "event": "reg_state",
                "account": key,
                "code": int(prm.code),
                "reason": str(prm.reason),
                # prm.expiration is what the registrar granted (0 after an unregistration).
                "expires": int(prm.expiration),
                "active": bool(info.regIsActive) if info is not None else False,
            }
        )

    def on_buddy_state(self, key: str, uri: str) -> None:
        buddy = self.buddies.get((key, uri))
        if buddy is None:
            return  # a callback during create(), before the buddy is stored: state follows
        self.emit({"event": "buddy_state", **self._buddy_fields(key, uri, buddy)})

    # -- lifetime -------------------------------------------------------------------------

    def shutdown(self) -> None:
        # Calls and media ports, buddies, then accounts, everything before libDestroy
        # (PJSUA2_NOTES.md lifetimes): dropping the last reference deletes the pjsua object.
        # No loop variable here: one left bound would keep the last Call alive past libDestroy,
        # and its destructor then trips an assertion in pjsua (an abort, not an exception).
        _stop_all([e.tone_gen for e in self.calls.values() if e.tone_gen is not None])
        self.ep.hangupAllCalls()
        self.calls.clear()
        self.graveyard.clear()
        self.buddies.clear()
        for account in self.accounts.values():
            account.shutdown()
        self.accounts.clear()
        # NO_NETWORK: no unregistration on the way out, ~10 ms instead of ~1 s.
        self.ep.libDestroy(self.pj.PJSUA_DESTROY_NO_NETWORK)


def _stop_all(generators: list[Any]) -> None:
    for gen in generators:
        gen.stop()


def _require(cmd: JsonObj, name: str, kind: type) -> Any:
    value = cmd.get(name)
    if not isinstance(value, kind):
        raise CommandError(f"{name!r} is required ({kind.__name__})")
    return value


def _make_log_writer(pj: Any) -> Any:
    class StderrLogWriter(pj.LogWriter):  # type: ignore[misc]
        def write(self, entry: Any) -> None:
            sys.stderr.write(entry.msg if entry.msg.endswith("\n") else entry.msg + "\n")

    return StderrLogWriter()


def _make_account(pj: Any, controller: Controller, key: str) -> Any:
    class RigAccount(pj.Account):  # type: ignore[misc]
        def onRegState(self, prm: Any) -> None:
            # pjsua2 prints and swallows exceptions from callbacks: report them on stderr.
            try:
                controller.on_reg_state(key, prm)
            except Exception as exc:  # callback boundary: never let it vanish silently
                print(f"onRegState failed: {exc!r}", file=sys.stderr)

        def onIncomingCall(self, prm: Any) -> None:
            try:
                controller.on_incoming_call(key, prm)
            except Exception as exc:  # callback boundary: never let it vanish silently
                print(f"onIncomingCall failed: {exc!r}", file=sys.stderr)

    return RigAccount()


_STATE_NAMES: dict[int, str] = {}
_MEDIA_STATUS: dict[int, str] = {}


def _init_names(pj: Any) -> None:
    _STATE_NAMES.update(
        {
            pj.PJSIP_INV_STATE_NULL: "null",
            pj.PJSIP_INV_STATE_CALLING: "calling",
            pj.PJSIP_INV_STATE_INCOMING: "incoming",
            pj.PJSIP_INV_STATE_EARLY: "early",
            pj.PJSIP_INV_STATE_CONNECTING: "connecting",
            pj.PJSIP_INV_STATE_CONFIRMED: "confirmed",
            pj.PJSIP_INV_STATE_DISCONNECTED: "disconnected",
        }
    )
    _MEDIA_STATUS.update(
        {
            pj.PJSUA_CALL_MEDIA_NONE: "none",
            pj.PJSUA_CALL_MEDIA_ACTIVE: "active",
            pj.PJSUA_CALL_MEDIA_LOCAL_HOLD: "local_hold",
            pj.PJSUA_CALL_MEDIA_REMOTE_HOLD: "remote_hold",
            pj.PJSUA_CALL_MEDIA_ERROR: "error",
        }
    )


def _header_lines(whole_msg: str) -> list[str]:
    head = whole_msg.replace("\r\n", "\n").split("\n\n", 1)[0]
    lines: list[str] = []
    for line in head.split("\n"):
        if line[:1] in (" ", "\t") and lines:
            lines[-1] += " " + line.strip()  # folded header (RFC 3261 §7.3.1)
        else:
            lines.append(line)
    return lines


def _request_uri(whole_msg: str) -> str:
    first = _header_lines(whole_msg)[0].split()
    return first[1] if len(first) == 3 else ""


def _reported_headers(whole_msg: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in _header_lines(whole_msg)[1:]:
        name, sep, value = line.partition(":")
        if sep and name.strip().lower().startswith(_REPORTED_HEADER_PREFIXES):
            out[name.strip()] = value.strip()
    return out


def _make_call(pj: Any, controller: Controller, account: Any, call_id: int | None = None) -> Any:
    class RigCall(pj.Call):  # type: ignore[misc]
        rig_id = 0

        def _entry(self) -> CallEntry | None:
            return controller.calls.get(self.rig_id)

        def _guard(self, name: str, fn: Callable[[CallEntry], None]) -> None:
            try:
                entry = self._entry()
                if entry is not None:
                    fn(entry)
            except Exception as exc:  # callback boundary: never let it vanish silently
                print(f"{name} failed: {exc!r}", file=sys.stderr)

        def onCallState(self, prm: Any) -> None:
            self._guard("onCallState", controller.on_call_state)

        def onCallMediaState(self, prm: Any) -> None:
            self._guard("onCallMediaState", controller.on_call_media_state)

        def onDtmfDigit(self, prm: Any) -> None:
            self._guard("onDtmfDigit", lambda e: controller.on_dtmf(e, str(prm.digit), prm.method))

        def onCallTransferRequest(self, prm: Any) -> None:
            self._guard("onCallTransferRequest", lambda e: controller.on_transfer_request(e, prm))

        def onCallTransferStatus(self, prm: Any) -> None:
            self._guard("onCallTransferStatus", lambda e: controller.on_transfer_status(e, prm))

        def onCallReplaced(self, prm: Any) -> None:
            self._guard("onCallReplaced", lambda e: controller.on_call_replaced(e, prm))

    if call_id is None:
        return RigCall(account)
    return RigCall(account, call_id)


def _make_rx_port(pj: Any, detector: ToneDetector) -> Any:
    class RxPort(pj.AudioMediaPort):  # type: ignore[misc]
        # Runs on pjmedia's clock thread for every 20 ms frame: keep it to a cheap copy and the
        # detector's dot products; never call pj from here.
        def onFrameReceived(self, frame: Any) -> None:
            try:
                if int(frame.size):
                    detector.feed(vector_bytes(frame.buf))
            except Exception as exc:  # callback boundary: never let it vanish silently
                print(f"onFrameReceived failed: {exc!r}", file=sys.stderr)

    return RxPort()


def _make_buddy(pj: Any, controller: Controller, key: str, uri: str) -> Any:
    class RigBuddy(pj.Buddy):  # type: ignore[misc]
        # Both callbacks report the whole state: presence document (onBuddyState) and
        # subscription state (onBuddyEvSubState) changes arrive separately.
        def onBuddyState(self) -> None:
            try:
                controller.on_buddy_state(key, uri)
            except Exception as exc:  # callback boundary: never let it vanish silently
                print(f"onBuddyState failed: {exc!r}", file=sys.stderr)

        def onBuddyEvSubState(self, prm: Any) -> None:
            try:
                controller.on_buddy_state(key, uri)
            except Exception as exc:  # callback boundary: never let it vanish silently
                print(f"onBuddyEvSubState failed: {exc!r}", file=sys.stderr)

    return RigBuddy()


def serve(controller: Controller, stdin_fd: int, *, max_lifetime: float) -> None:
    """Poll pj and stdin on this one thread until ``quit``, EOF on stdin, or ``max_lifetime``."""
    buffer = b""
    deadline = time.monotonic() + max_lifetime
    controller.emit(
        {
            "event": "ready",
            "pid": os.getpid(),
            "udp_port": controller.transport_ports["udp"],
            "tcp_port": controller.transport_ports["tcp"],
        }
    )
    while not controller.quitting and time.monotonic() < deadline:
        controller.ep.libHandleEvents(5)
        controller.tick()
        readable, _, _ = select.select([stdin_fd], [], [], 0.005)
        if not readable:
            continue
        chunk = os.read(stdin_fd, 65536)
        if not chunk:
            break  # the controlling test went away: exit rather than linger
        buffer += chunk
        while b"\n" in buffer and not controller.quitting:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                controller.dispatch(line.decode("utf-8", errors="replace"))
    # Let the reply to "quit" and any final events flush through pj once more.
    controller.ep.libHandleEvents(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--json-control",
        action="store_true",
        required=True,
        help="read JSON commands on stdin, write JSON replies/events on stdout",
    )
    parser.add_argument("--log-level", type=int, default=3, help="pjsua2 log level (0-6)")
    parser.add_argument("--msg-log", action="store_true", help="log every SIP message")
    parser.add_argument(
        "--tone", type=int, default=DEFAULT_TONES[0], help="Hz played into every call"
    )
    parser.add_argument(
        "--watch",
        default=",".join(str(t) for t in DEFAULT_TONES),
        help="comma-separated Hz the detector watches in received audio",
    )
    parser.add_argument(
        "--codec",
        action="append",
        help="codec id to offer, highest priority first (default PCMU/8000/1; repeatable)",
    )
    parser.add_argument(
        "--max-lifetime",
        type=float,
        default=900.0,
        help="exit after this many seconds even without 'quit'",
    )
    args = parser.parse_args(argv)
    out = _redirect_native_stdout()
    controller = Controller(
        out,
        log_level=args.log_level,
        msg_logging=args.msg_log,
        tone=args.tone,
        watch=tuple(int(f) for f in args.watch.split(",") if f.strip()),
        codecs=tuple(args.codec or ("PCMU/8000/1",)),
    )
    try:
        serve(controller, sys.stdin.fileno(), max_lifetime=args.max_lifetime)
    finally:
        controller.shutdown()
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
