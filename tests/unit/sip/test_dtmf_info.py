"""DTMF digits in SIP INFO bodies."""

from __future__ import annotations

import pytest

from ucgate.sip.dtmf_info import dtmf_digit


@pytest.mark.parametrize(
    ("ctype", "body", "digit"),
    [
        ("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n", "5"),
        ("application/dtmf-relay", b"Signal= #\r\nDuration= 100", "#"),
        ("Application/DTMF-Relay; charset=x", b"signal=*\n", "*"),
        ("application/dtmf-relay", b"Signal=11\r\n", "#"),
        ("application/dtmf", b"7", "7"),
        ("application/dtmf", b"d", "D"),
    ],
)
def test_digits(ctype: str, body: bytes, digit: str) -> None:
    assert dtmf_digit(ctype, body) == digit


@pytest.mark.parametrize(
    ("ctype", "body"),
    [
        ("application/dtmf-relay", b"Duration=160"),
        ("application/dtmf-relay", b"Signal=55"),
        ("application/dtmf", b"x"),
        ("text/plain", b"5"),
        (None, b"Signal=5"),
        ("application/dtmf", b"\xff"),
    ],
)
def test_no_digit(ctype: str | None, body: bytes) -> None:
    assert dtmf_digit(ctype, body) is None
