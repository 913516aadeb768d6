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
(RFC 3261 §8.1.2 outbound proxy). Commands live in a table (``Controller.commands``) so call
control (make_call / answer / hold / transfer / dtmf) can be added as more entries without
touching the loop. Passwords are never logged or echoed.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

JsonObj = dict[str, Any]
_TRANSPORTS = ("udp", "tcp")
_STATUSES = ("online", "offline")
_ACTIVITIES = ("unknown", "away", "busy")


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

    def __init__(self, out: TextIO, *, log_level: int, msg_logging: bool) -> None:
        import pjsua2 as pj  # imported here: the module must load after fd 1 is redirected

        self.pj = pj
        self.out = out
        self.quitting = False
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
        }
        self.ep = pj.Endpoint()
        self.ep.libCreate()
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = False
        cfg.uaConfig.userAgent = "ucgate-rig-pjsua2"
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
        # Buddies before accounts, everything before libDestroy (PJSUA2_NOTES.md lifetimes):
        # dropping the last reference deletes the pjsua buddy.
        self.buddies.clear()
        for account in self.accounts.values():
            account.shutdown()
        self.accounts.clear()
        # NO_NETWORK: no unregistration on the way out, ~10 ms instead of ~1 s.
        self.ep.libDestroy(self.pj.PJSUA_DESTROY_NO_NETWORK)


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

    return RigAccount()


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
        "--max-lifetime",
        type=float,
        default=900.0,
        help="exit after this many seconds even without 'quit'",
    )
    args = parser.parse_args(argv)
    out = _redirect_native_stdout()
    controller = Controller(out, log_level=args.log_level, msg_logging=args.msg_log)
    try:
        serve(controller, sys.stdin.fileno(), max_lifetime=args.max_lifetime)
    finally:
        controller.shutdown()
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
