"""A PBX trunk simulator for call tests: a softphone process that behaves like a PBX's trunk.

It is the pjsua2 softphone (``sip_test_rig.softphone``) in a trunk's clothes, so calls it places
and answers carry real audio (its own tone, detected on the far side) and the same events:

* ``registered``: registers to the server as the trunk's user (``[[trunks]] id``, e.g. ``pbx1``)
  with digest credentials, routing every request through the server (outbound proxy);
* ``ip_trunk``: does not register; sends everything to the server, which must recognise it by
  source address (``allowed_ips = ["127.0.0.1"]``); its From is ``sip:pbx@127.0.0.1``;
* ``call_did("+15550100")`` places an inbound call: ``INVITE sip:+15550100@<domain>`` through the
  server; ``answer_calls`` (``auto_answer`` at start) answers what the server sends to the trunk
  (outbound calls dialled by agents).

One process holds at most 4 calls (pjsua2's PJSUA_MAX_CALLS): start several trunks for more.

    with PbxTrunk(server="127.0.0.1:5060", domain="example.test", tone=3000) as pbx:
        pbx.register_trunk("pbx1", "secret")
        call = pbx.call_did("+15550100")
        pbx.wait_call_state(call, "confirmed")
        pbx.wait_tone(call, 600)
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from sip_test_rig.media import DEFAULT_TONES
from sip_test_rig.softphone_client import Softphone

#: The trunk's tone: the last default, so it never equals an agent phone's first choices.
PBX_TONE = DEFAULT_TONES[-1]


class PbxTrunk(Softphone):
    """A softphone subprocess acting as a PBX trunk towards ``server`` (``host:port``)."""

    def __init__(self, *, server: str, domain: str, tone: int = PBX_TONE, **kwargs: Any) -> None:
        super().__init__(tone=tone, **kwargs)
        self.server = server
        self.domain = domain
        self.account = ""

    def __enter__(self) -> PbxTrunk:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        super().__exit__(exc_type, exc, tb)

    def register_trunk(
        self,
        trunk_id: str,
        password: str,
        *,
        auto_answer: int | None = 200,
        timeout: float = 10.0,
    ) -> str:
        """REGISTER as ``trunk_id`` and wait for the 200; returns the account key."""
        self.account = self.register(
            server=self.server,
            user=trunk_id,
            password=password,
            domain=self.domain,
            proxy=True,
            auto_answer=auto_answer,
        )
        state = self.wait_reg_state(account=self.account, timeout=timeout)
        if state.get("code") != 200:
            raise RuntimeError(f"trunk registration failed: {state}")
        return self.account

    def ip_trunk(self, *, user: str = "pbx", auto_answer: int | None = 200) -> str:
        """No registration: every request goes to the server from 127.0.0.1."""
        self.account, _ = self.local_account(
            user, proxy=f"sip:{self.server};lr", auto_answer=auto_answer
        )
        return self.account

    def call_did(self, did: str, *, headers: dict[str, str] | None = None) -> int:
        """An inbound call from the PSTN side: INVITE sip:<did>@<domain> via the server."""
        if not self.account:
            raise RuntimeError("register_trunk() or ip_trunk() first")
        return self.make_call(f"sip:{did}@{self.domain}", account=self.account, headers=headers)


__all__ = ["PBX_TONE", "PbxTrunk"]
