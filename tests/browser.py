"""Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
JSON messages ending in NUL on file descriptors 3 and 4), so a test can see every request
a page makes and every console error, with no WebSocket library.

Used by tests/test_report_browser.py and bench/report.py. The network is off twice over:
the browser resolves no host name, and the page's network is emulated offline.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
_HIGH = (200, 201)  # where the pipe ends wait until the child moves them to 3 and 4


def _end_group(leader: subprocess.Popen, timeout: float = 10) -> None:
    """SIGKILL the process group that `leader` heads; return once every process in it has
    died. Orphans stay zombies until PID 1 reaps them, so death is read from /proc."""
    os.killpg(leader.pid, signal.SIGKILL)
    leader.wait()
    deadline = time.monotonic() + timeout
    while living(group=leader.pid):
        if time.monotonic() > deadline:
            raise TimeoutError(f"Chromium's processes outlived SIGKILL for {timeout} s")
        time.sleep(0.02)


def living(group: int) -> bool:
    """Whether a process of `group` is still running (not a zombie)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it ended while listed
        if int(fields[2]) == group and fields[0] not in "ZX":
            return True
    return False


def chromium() -> str | None:
    """The browser's path, or None when none is installed."""
    return next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)


@dataclass
class PageLoad:
    """What loading one page did: every URL requested, console errors and uncaught
    exceptions, the load time, values read from the page and a PNG screenshot."""

    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    load_ms: float = 0.0
    values: dict[str, Any] = field(default_factory=dict)
    screenshots: list[bytes] = field(default_factory=list)


class Browser:
    """One headless Chromium with a fresh profile; a context manager."""

    def __init__(self, width: int = 1280, height: int = 1600) -> None:
        self.size = (width, height)
        self.profile = tempfile.TemporaryDirectory(prefix="report-browser-")
        commands_read, self._commands = os.pipe()
        self._events, events_write = os.pipe()
        os.dup2(commands_read, _HIGH[0])
        os.dup2(events_write, _HIGH[1])
        for fd in (commands_read, events_write):
            os.close(fd)
        # The shell moves the pipe ends to 3 and 4 (a preexec_fn could not: Popen closes
        # every descriptor not passed after it runs).
        self.process = subprocess.Popen(
            [
                "bash",
                "-c",
                f'exec "$0" "$@" 3<&{_HIGH[0]} 4>&{_HIGH[1]} {_HIGH[0]}<&- {_HIGH[1]}>&-',
                chromium() or "chromium",
                "--headless=new",
                "--remote-debugging-pipe",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-crash-reporter",
                "--host-resolver-rules=MAP * ~NOTFOUND",
                f"--user-data-dir={self.profile.name}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            pass_fds=_HIGH,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its renderers and helpers share one group to end
        )
        for fd in _HIGH:
            os.close(fd)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """End the browser and every process it started, then remove the profile: killing
        the main process alone leaves its renderers writing into the profile as it goes."""
        _end_group(self.process)
        os.close(self._commands)
        os.close(self._events)
        self.profile.cleanup()

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._events], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._events, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed its DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Run one command and return its result; events read meanwhile are kept."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + 60
        while True:
            reply = self._message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60) -> dict:
        """The first event named `method`, read now or earlier."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event.get("method") == method:
                    return event
            self.events.append(self._message(deadline))

    def load(self, page: Path, read: str, scroll_to: tuple[str, ...] = ()) -> PageLoad:
        """Open `page` from file:// offline; evaluate the JS expression `read` (returning a
        JSON-able value, or a promise of one) once it has loaded; screenshot the top, then
        each element of `scroll_to` (CSS selectors) scrolled into view."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})
        sid = session["sessionId"]
        for domain in ("Network", "Runtime", "Log", "Page"):
            self.send(f"{domain}.enable", session=sid)
        offline = {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}
        self.send("Network.emulateNetworkConditions", offline, sid)
        width, height = self.size
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
        self.send("Emulation.setDeviceMetricsOverride", metrics, sid)
        self.events.clear()
        self.send("Page.navigate", {"url": page.resolve().as_uri()}, sid)
        self.wait_for("Page.loadEventFired")
        result = PageLoad()
        expression = "performance.getEntriesByType('navigation')[0].loadEventEnd"
        result.load_ms = self._evaluate(expression, sid)
        result.values = self._evaluate(read, sid)
        result.screenshots.append(self._screenshot(sid))
        for selector in scroll_to:
            self._evaluate(f"document.querySelector({json.dumps(selector)}).scrollIntoView()", sid)
            result.screenshots.append(self._screenshot(sid))
        self._collect(result)
        return result

    def _evaluate(self, expression: str, session: str) -> Any:
        options = {"expression": expression, "returnByValue": True, "awaitPromise": True}
        reply = self.send("Runtime.evaluate", options, session)
        if "exceptionDetails" in reply:
            raise RuntimeError(f"{expression}: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def _screenshot(self, session: str) -> bytes:
        return base64.b64decode(
            self.send("Page.captureScreenshot", {"format": "png"}, session)["data"]
        )

    def _collect(self, result: PageLoad) -> None:
        """Requests and errors from the events seen since the page was opened."""
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Network.requestWillBeSent":
                result.requests.append(params["request"]["url"])
            elif method == "Runtime.exceptionThrown":
                result.errors.append(json.dumps(params["exceptionDetails"])[:500])
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                result.errors.append(json.dumps(params.get("args"))[:500])
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                result.errors.append(params["entry"].get("text", ""))
            elif method == "Network.loadingFailed":
                result.errors.append(f"failed: {params.get('errorText')}")
