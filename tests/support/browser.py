"""Real Chromium for interop tests: the Debian browser (/usr/bin/chromium), headless, driven
by Playwright over CDP, with a fake microphone that plays a generated tone.

We start Chromium ourselves (``subprocess.Popen``, so teardown stops it by PID) with a
DevTools port Chromium picks (read back from ``DevToolsActivePort``: no port race), then
attach Playwright with ``connect_over_cdp``. Playwright never downloads a browser here.

Flags and why:

- ``--use-fake-ui-for-media-stream`` grants getUserMedia without a prompt;
  ``--use-fake-device-for-media-stream`` + ``--use-file-for-fake-audio-capture=<wav>`` make
  the microphone play the WAV in a loop. The file is per browser process, so two tones need
  two :class:`Chromium` instances;
- ``--allow-loopback-in-peer-connection``: the machine has loopback only, and WebRTC skips
  127.0.0.1 candidates without it; ``--disable-features=WebRtcHideLocalIpsWithMdns`` keeps
  host candidates as IP addresses (``.local`` mDNS names resolve nowhere here);
- ``--autoplay-policy=no-user-gesture-required``: the pages play remote audio without a
  click (Chromium feeds a remote track into WebAudio only while an element plays it).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import struct
import subprocess
import tempfile
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

CHROMIUM = Path(os.environ.get("UCGATE_CHROMIUM", "/usr/bin/chromium"))
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"

T = TypeVar("T")


def chromium_available() -> bool:
    return CHROMIUM.exists() and os.access(CHROMIUM, os.X_OK)


def write_tone_wav(
    path: Path, frequency: float, *, seconds: float = 3.0, rate: int = 48000, level: float = 0.5
) -> Path:
    """A mono 16-bit PCM sine; an integer number of periods per file so the loop is seamless."""
    frames = int(rate * seconds)
    periods = max(1, round(frequency * frames / rate))
    step = 2 * math.pi * periods / frames
    amp = int(32767 * level)
    data = b"".join(struct.pack("<h", int(amp * math.sin(step * i))) for i in range(frames))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(data)
    return path


def wait_for(
    probe: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.1
) -> T:
    """Poll ``probe`` until it returns something truthy; TimeoutError naming ``what``.

    Only for what gives no event to wait on (the DevTools port file Chromium writes); waits
    on a page use ``page.wait_for_function`` / Playwright's ``expect``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not within {timeout}s (last: {last!r})")
        time.sleep(interval)


class _Driver:
    """One Playwright driver for the thread: the sync API allows only one at a time, so
    every :class:`Chromium` of a test shares it; the last one stopped stops it."""

    playwright: Playwright | None = None
    users = 0

    @classmethod
    def acquire(cls) -> Playwright:
        if cls.playwright is None:
            cls.playwright = sync_playwright().start()
        cls.users += 1
        return cls.playwright

    @classmethod
    def release(cls) -> None:
        cls.users -= 1
        if cls.users <= 0 and cls.playwright is not None:
            playwright, cls.playwright, cls.users = cls.playwright, None, 0
            with contextlib.suppress(Exception):
                playwright.stop()


@dataclass
class Chromium:
    """One headless Chromium process whose microphone plays ``tone_hz`` (None: Chromium's
    own fake device beep)."""

    workdir: Path
    tone_hz: float | None = None
    proc: subprocess.Popen[bytes] | None = None
    playwright: Playwright | None = None
    browser: Browser | None = None
    contexts: list[BrowserContext] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def start(self, timeout: float = 30.0) -> Chromium:
        if not chromium_available():
            # Fail, never skip: the browser tests are what proves the pages and WebRTC
            # media work, and `make test` installs Debian's chromium.
            raise RuntimeError(f"{CHROMIUM} not found; install it (apt-get install chromium)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        profile = Path(tempfile.mkdtemp(prefix="profile-", dir=self.workdir))
        args = [
            str(CHROMIUM),
            "--headless=new",
            "--no-sandbox",  # root in a container: the sandbox cannot start
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            f"--user-data-dir={profile}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            "--allow-loopback-in-peer-connection",
            "--disable-features=WebRtcHideLocalIpsWithMdns",
            "--autoplay-policy=no-user-gesture-required",
            "about:blank",
        ]
        if self.tone_hz is not None:
            wav = write_tone_wav(self.workdir / f"tone-{int(self.tone_hz)}.wav", self.tone_hz)
            args.insert(-1, f"--use-file-for-fake-audio-capture={wav}")
        log = (self.workdir / "chromium.log").open("wb")
        self.proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        try:
            port_file = profile / "DevToolsActivePort"

            def port() -> int | None:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(
                        "chromium exited: " + (self.workdir / "chromium.log").read_text()[-2000:]
                    )
                with contextlib.suppress(FileNotFoundError, ValueError):
                    text = port_file.read_text().split("\n", 1)[0].strip()
                    return int(text) if text else None
                return None

            cdp_port = wait_for(port, timeout=timeout, what="chromium DevTools port")
            self.playwright = _Driver.acquire()
            self.browser = self.playwright.chromium.connect_over_cdp(
                f"http://127.0.0.1:{cdp_port}", timeout=timeout * 1000
            )
        except BaseException:
            self.stop()
            raise
        return self

    def new_page(self, base_url: str) -> Page:
        assert self.browser is not None
        context = self.browser.new_context(base_url=base_url)
        context.grant_permissions(["microphone"], origin=base_url)
        self.contexts.append(context)
        page = context.new_page()
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        page.set_default_timeout(15000)
        return page

    def stop(self) -> None:
        for context in self.contexts:
            with contextlib.suppress(Exception):
                context.close()
        self.contexts.clear()
        if self.browser is not None:
            with contextlib.suppress(Exception):
                self.browser.close()
            self.browser = None
        if self.playwright is not None:
            self.playwright = None
            _Driver.release()
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def screenshot(page: Page, name: str) -> Path:
    """Save a full-page PNG under test-artifacts/ (gitignored) and return its path."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def wait_for_tone(
    page: Page,
    frequency: float,
    *,
    api: str = "ucgateDesk",
    tolerance: float = 25.0,
    min_db: float = -50.0,
    timeout: float = 20.0,
) -> dict[str, Any]:
    """Wait (inside the page, bounded) until it hears ``frequency`` (± tolerance Hz) above
    ``min_db`` dBFS through ``window.<api>.mediaStats()``; returns those stats."""
    handle = page.wait_for_function(
        """([api, f, tol, db]) => {
            const s = window[api].mediaStats();
            return s && s.energy_db > db && Math.abs(s.frequency - f) <= tol ? s : null;
        }""",
        arg=[api, frequency, tolerance, min_db],
        polling=100,
        timeout=timeout * 1000,
    )
    stats: dict[str, Any] = handle.json_value()
    return stats


def wait_for_silence_or_other(
    page: Page, frequency: float, *, api: str = "ucgateDesk", timeout: float = 20.0
) -> dict[str, Any] | None:
    """Wait until ``frequency`` is no longer the loud dominant tone (e.g. while on hold);
    returns the stats then (None if the page has no remote audio at all any more)."""
    handle = page.wait_for_function(
        """([api, f]) => {
            const s = window[api].mediaStats();
            if (s === null) return {stats: null};
            return s.energy_db < -60 || Math.abs(s.frequency - f) > 25 ? {stats: s} : null;
        }""",
        arg=[api, frequency],
        polling=100,
        timeout=timeout * 1000,
    )
    result: dict[str, Any] = handle.json_value()
    stats: dict[str, Any] | None = result["stats"]
    return stats


def chromium_version() -> str:
    out = subprocess.run(
        [str(CHROMIUM), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    return out.stdout.strip()


def cleanup_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
