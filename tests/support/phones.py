"""A pjsua2 rig phone registered with a ucgate node, for the call tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sip_test_rig.softphone_client import Softphone
from tests.support.ucgate_process import Account, UcgateProcess

DOMAIN = "example.test"


@contextmanager
def registered_phone(
    node: UcgateProcess, account: Account, *, tone: int, **extra: Any
) -> Iterator[Softphone]:
    """A phone playing ``tone``, registered as ``account`` (``extra``: auto_answer, …);
    stopped by its PID on exit."""
    phone = Softphone(tone=tone).start()
    try:
        acc = phone.register(
            server=f"127.0.0.1:{node.sip_port}",
            user=account.id,
            password=account.password,
            domain=DOMAIN,
            proxy=True,
            **extra,
        )
        assert phone.wait_reg_state(account=acc, timeout=10)["code"] == 200
        yield phone
    finally:
        phone.stop()
