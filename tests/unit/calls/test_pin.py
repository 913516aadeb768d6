"""PIN entry state machine."""

from __future__ import annotations

from ucgate.calls.pin import PinCollector, PinComplete, PinExhausted


def press_all(pin: PinCollector, keys: str) -> list[object]:
    return [out for k in keys if (out := pin.press(k)) is not None]


def test_six_digits_complete_an_entry() -> None:
    pin = PinCollector()
    assert press_all(pin, "12345") == []
    assert pin.press("6") == PinComplete("123456")


def test_hash_ends_early_and_star_starts_again() -> None:
    pin = PinCollector()
    assert press_all(pin, "99*12#") == [PinComplete("12")]
    fresh = PinCollector()
    assert fresh.press("#") is None  # nothing typed yet: nothing to look up


def test_keys_during_a_lookup_are_ignored() -> None:
    pin = PinCollector(length=2)
    assert press_all(pin, "12") == [PinComplete("12")]
    assert press_all(pin, "34") == []
    assert pin.rejected() is None
    assert press_all(pin, "56") == [PinComplete("56")]


def test_three_wrong_entries_exhaust() -> None:
    pin = PinCollector(length=1, max_tries=3)
    outcomes = []
    for key in "123":
        assert pin.press(key) == PinComplete(key)
        outcomes.append(pin.rejected())
    assert outcomes == [None, None, PinExhausted()]


def test_letters_are_not_pin_digits() -> None:
    pin = PinCollector(length=2)
    assert press_all(pin, "A1B2") == [PinComplete("12")]
