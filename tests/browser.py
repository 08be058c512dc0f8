"""A real headless Chromium for tests of pages a person looks at, driven by the DevTools protocol.

Debian's ``chromium`` package is installed with apt-get when it is missing (root only, as
``tests/docker_engine.py`` installs ``docker.io``); without root or apt-get the caller skips with
the reason. The browser runs ``--headless=new`` with a throw-away profile and talks the Chrome
DevTools protocol over a pipe (``--remote-debugging-pipe``: JSON messages separated by NUL bytes
on file descriptors 3 and 4), so no Python package and no network port is needed.

Usage::

    with Browser(ensure_chromium(), tmp_path / "profile") as page:
        page.open(path, width=1366, height=768)
        page.evaluate("document.documentElement.scrollWidth")
        page.screenshot(tmp_path / "shot.png")
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.docker_engine import EngineError, sh

CHROMIUM_NAMES = ("chromium", "chromium-browser")
APT_PACKAGE = "chromium"
#: Any host name resolves to nothing: a page that reaches for the network fails visibly.
NO_NETWORK = "--host-resolver-rules=MAP * ~NOTFOUND"


class BrowserUnavailable(RuntimeError):
    """No browser is installed and none can be installed here (no root or no apt-get)."""


class BrowserError(RuntimeError):
    """The browser failed to start, answered with an error, or did not answer in time."""


def find_chromium() -> str | None:
    """Path of an installed Chromium binary, else None."""
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


def ensure_chromium() -> str:
    """An installed Chromium; installs Debian's ``chromium`` with apt-get (as root) when absent.

    Raises ``BrowserUnavailable`` when there is none and no way to install one, ``EngineError``
    when the installation itself fails (a real failure, not a reason to skip).
    """
    found = find_chromium()
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise BrowserUnavailable("no chromium installed and none can be installed (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=600"]  # another test or engineer may be running apt
    sh(["apt-get", *lock, "update", "-q"], env=env, timeout=900)
    sh(["apt-get", *lock, "install", "-y", "-q", "--no-install-recommends", APT_PACKAGE], env=env, timeout=1200)
    found = find_chromium()
    if not found:
        raise EngineError(f"apt-get installed {APT_PACKAGE} but no {' or '.join(CHROMIUM_NAMES)} is on PATH")
    return found


def _pipe_fds(commands: int, replies: int) -> None:
    """In the child: the browser reads commands from fd 3 and writes replies to fd 4."""
    commands, replies = os.dup(commands), os.dup(replies)  # above 4, so that neither dup2 clobbers the other
    os.dup2(commands, 3)
    os.dup2(replies, 4)


class Browser:
    """One headless Chromium process with one page, driven over the DevTools pipe."""

    def __init__(self, binary: str, profile: Path, timeout_s: float = 30.0) -> None:
        self.binary, self.profile, self.timeout_s = binary, Path(profile), timeout_s
        self.process: subprocess.Popen | None = None
        self.session: str | None = None
        self.events: list[dict[str, Any]] = []
        self._next_id = 0
        self._buffer = b""

    def __enter__(self) -> Browser:
        self.profile.mkdir(parents=True, exist_ok=True)
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        args = [
            self.binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
            f"--user-data-dir={self.profile}", "--no-first-run", "--no-default-browser-check",
            "--disable-extensions", "--disable-background-networking", "--disable-sync",
            "--disable-component-update", "--mute-audio", NO_NETWORK, "about:blank",
        ]  # fmt: skip
        self._log = (self.profile / "stderr.log").open("wb")
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            close_fds=False,  # fds 3 and 4 are made in preexec_fn, after which close_fds would close them
            preexec_fn=lambda: _pipe_fds(to_browser_r, from_browser_w),
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        try:
            target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Network"):
                self.call(f"{domain}.enable")
        except BaseException:
            self.__exit__()  # no browser left running when the start fails
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is None:
            return
        with contextlib.suppress(BrowserError, OSError):  # (a browser that died has closed its pipe)
            self.call("Browser.close", timeout_s=5)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        for fd in (self._to_browser, self._from_browser):
            os.close(fd)
        self._log.close()
        self.process = None

    # -- protocol -------------------------------------------------------------------------------
    def call(self, method: str, params: dict[str, Any] | None = None, timeout_s: float | None = None) -> dict:
        """Send one command (to the page's session once attached) and return its result."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if self.session is not None and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while True:
            reply = self._read(deadline, f"{method} (id {self._next_id})")
            if reply.get("id") != self._next_id:
                self.events.append(reply)
                continue
            if "error" in reply:
                raise BrowserError(f"{method}: {reply['error']}")
            return reply.get("result", {})

    def _read(self, deadline: float, waiting_for: str) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_browser], [], [], max(left, 0))
            if not ready:
                raise BrowserError(f"no answer from chromium to {waiting_for} in time; see {self.profile}/stderr.log")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                log = (self.profile / "stderr.log").read_text(errors="replace")[-2000:]
                raise BrowserError(f"chromium closed the pipe while waiting for {waiting_for}:\n{log}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def wait_for_event(self, method: str, timeout_s: float | None = None) -> dict[str, Any]:
        """The first event named ``method`` (already received or still to come)."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while True:
            for i, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._read(deadline, method))

    # -- page -----------------------------------------------------------------------------------
    def open(self, path: Path, width: int, height: int) -> None:
        """Set a desktop viewport of ``width x height`` CSS pixels and load a local file."""
        self.resize(width, height)
        self.events.clear()
        self.call("Page.navigate", {"url": Path(path).resolve().as_uri()})
        self.wait_for_event("Page.loadEventFired")

    def resize(self, width: int, height: int) -> None:
        """Emulate a desktop window of ``width x height`` CSS pixels (scale 1)."""
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
        self.call("Emulation.setDeviceMetricsOverride", metrics)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serialisable results only)."""
        reply = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in reply:
            raise BrowserError(f"{expression!r} raised: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        """A PNG of the viewport (or of the whole page), written to ``path``."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.call("Page.getLayoutMetrics")["cssContentSize"]
            params |= {"captureBeyondViewport": True, "clip": {"x": 0, "y": 0, "scale": 1, **{k: size[k] for k in ("width", "height")}}}
        data = self.call("Page.captureScreenshot", params)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def requested_urls(self) -> list[str]:
        """URLs of every request the page made since it was opened (from Network events)."""
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]
