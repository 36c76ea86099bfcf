"""Open a saved page in headless Chromium and report what a reader would see; stdlib only.

The browser is driven over the DevTools protocol on ``--remote-debugging-pipe`` (JSON messages separated by
NUL bytes on file descriptors 3 and 4), so no websocket package is needed. One :class:`Browser` serves many
pages; for each :meth:`Browser.open` returns the uncaught exceptions and console errors, every request that
was not ``file:``/``data:`` (a self-contained page makes none) and DOM counts; :meth:`Browser.screenshot`
takes a PNG of the page or of one element.

Used by ``tests/report`` and to take the example screenshots under ``reports/examples``. Nothing here is
imported by the renderers.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import struct
import subprocess
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import VramplanError

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--hide-scrollbars", "--mute-audio", "--remote-debugging-pipe",
)

# Resolves once every plotly div on the page holds its SVG layers (or after `ms`), with DOM counts.
_SETTLE_JS = """
new Promise(resolve => {
  const t0 = Date.now();
  (function poll() {
    const divs = Array.from(document.querySelectorAll('.plotly-graph-div'));
    const drawn = divs.filter(d => d.querySelector('.main-svg')).length;
    if (drawn === divs.length || Date.now() - t0 > %(ms)d) {
      requestAnimationFrame(() => requestAnimationFrame(() => resolve(JSON.stringify({
        plotly_divs: divs.length,
        drawn_divs: drawn,
        main_svg: document.querySelectorAll('.main-svg').length,
        script_tags: document.querySelectorAll('script').length,
        external_scripts: document.querySelectorAll('script[src]').length,
        notices: Array.from(document.querySelectorAll('.notice'))
          .filter(e => e.getClientRects().length > 0).map(e => e.textContent.trim()),
        tables: document.querySelectorAll('table.sortable').length,
        width: document.documentElement.scrollWidth,
        height: document.documentElement.scrollHeight,
      }))));
    } else { setTimeout(poll, 25); }
  })();
})
"""


class BrowserError(VramplanError):
    """Chromium is missing, would not start, or did not answer in time."""


@dataclass
class PageResult:
    """What one page did in the browser."""

    url: str
    errors: list[str] = field(default_factory=list)          # uncaught exceptions and console errors
    requests: list[str] = field(default_factory=list)        # URLs other than file: and data:
    dom: dict[str, Any] = field(default_factory=dict)        # counts from _SETTLE_JS


def find_chromium() -> str | None:
    """The Chromium executable on PATH (``chromium``, then ``chromium-browser``, ``google-chrome``), or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        exe = shutil.which(name)
        if exe:
            return exe
    return None


class Browser:
    """A headless Chromium process with one page, driven over the DevTools pipe. Use as a context manager."""

    def __init__(self, executable: str | None = None, *, width: int = 1280, height: int = 900,
                 timeout_s: float = 60.0) -> None:
        exe = executable or find_chromium()
        if exe is None:
            raise BrowserError("chromium not found on PATH: install it (apt-get install -y chromium)")
        self.width, self.height, self.timeout_s = width, height, timeout_s
        self._profile = tempfile.TemporaryDirectory(prefix="vramplan-chromium-")
        cmd_r, self._cmd_w = os.pipe()
        self._out_r, out_w = os.pipe()

        def child_fds() -> None:  # runs in the child before exec: the pipe ends become fds 3 and 4
            a = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(out_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self._proc = subprocess.Popen(
            [exe, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile.name}",
             f"--window-size={width},{height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=child_fds, close_fds=False)
        os.close(cmd_r)
        os.close(out_w)
        self._buf = b""
        self._next_id = 0
        self._events: list[dict[str, Any]] = []
        try:
            target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
            self._session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                self._call(f"{domain}.enable", session=True)
            self._call("Emulation.setDeviceMetricsOverride",
                       {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=True)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------------------------------ protocol
    def _send(self, message: dict[str, Any]) -> None:
        os.write(self._cmd_w, json.dumps(message).encode() + b"\0")

    def _recv(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"chromium did not answer within {self.timeout_s:.0f} s")
            ready, _, _ = select.select([self._out_r], [], [], left)
            if ready:
                chunk = os.read(self._out_r, 1 << 20)
                if not chunk:
                    raise BrowserError("chromium closed the DevTools pipe (it exited)")
                self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def _call(self, method: str, params: dict[str, Any] | None = None, *, session: bool = False) -> dict[str, Any]:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self._session
        self._send(msg)
        deadline = time.monotonic() + self.timeout_s
        while True:
            reply = self._recv(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            if "method" in reply:
                self._events.append(reply)

    def _wait_event(self, method: str) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not any(e["method"] == method for e in self._events):
            self._events.append(self._recv(deadline))

    # ---------------------------------------------------------------------------------------------- use
    def open(self, path: str | os.PathLike[str], *, settle_ms: int = 5000) -> PageResult:
        """Load a local file, wait for its plotly charts, and collect errors, requests and DOM counts."""
        url = Path(path).resolve().as_uri()
        self._events.clear()
        nav = self._call("Page.navigate", {"url": url}, session=True)
        if nav.get("errorText"):
            raise BrowserError(f"cannot open {url}: {nav['errorText']}")
        self._wait_event("Page.loadEventFired")
        result = PageResult(url=url)
        try:
            result.dom = json.loads(self.evaluate(_SETTLE_JS % {"ms": settle_ms}))
        except BrowserError as exc:
            result.errors.append(str(exc))
        for ev in self._events:
            method, p = ev["method"], ev.get("params", {})
            if method == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                result.errors.append("uncaught: " + str(d.get("exception", {}).get("description") or d.get("text")))
            elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                result.errors.append("console error: " + " ".join(str(a.get("value", a.get("description", "")))
                                                                  for a in p.get("args", [])))
            elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                result.errors.append("log error: " + str(p["entry"].get("text")))
            elif method == "Network.requestWillBeSent":
                req_url = p.get("request", {}).get("url", "")
                if not req_url.startswith(("file:", "data:")):
                    result.requests.append(req_url)
        return result

    def evaluate(self, expression: str) -> Any:
        """Evaluate JavaScript in the page (awaiting a promise) and return its JSON-able value."""
        res = self._call("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                              "returnByValue": True}, session=True)
        if "exceptionDetails" in res:
            d = res["exceptionDetails"]
            raise BrowserError(f"script failed: {d.get('exception', {}).get('description') or d.get('text')}")
        return res["result"].get("value")

    def screenshot(self, selector: str | None = None, *, full_page: bool = False, scale: float = 1.0) -> bytes:
        """A PNG of the viewport, of the whole page (``full_page``), or of the first element matching ``selector``."""
        params: dict[str, Any] = {"format": "png"}
        if selector is not None:
            box = self.evaluate("(() => { const r = document.querySelector(" + json.dumps(selector) + ")"
                                ".getBoundingClientRect(); return [r.left + scrollX, r.top + scrollY, r.width,"
                                " r.height]; })()")
            params["clip"] = {"x": box[0], "y": box[1], "width": box[2], "height": box[3], "scale": scale}
            params["captureBeyondViewport"] = True
        elif full_page or scale != 1.0:
            height = self.evaluate("document.documentElement.scrollHeight") if full_page else self.height
            params["clip"] = {"x": 0, "y": 0, "width": self.width, "height": height, "scale": scale}
            params["captureBeyondViewport"] = bool(full_page)
        return base64.b64decode(self._call("Page.captureScreenshot", params, session=True)["data"])

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                self._send({"id": 0, "method": "Browser.close", "params": {}})
                self._proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
        for fd in (self._cmd_w, self._out_r):
            try:
                os.close(fd)
            except OSError:
                pass
        self._profile.cleanup()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------- PNG
def png_rows(png: bytes) -> tuple[int, int, int, Iterator[bytes]]:
    """Decode an 8-bit, non-interlaced PNG (what Chromium writes): width, height, channels and its rows."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, header = 8, b"", None
    while pos < len(png):
        (length,), kind = struct.unpack(">I", png[pos:pos + 4]), png[pos + 4:pos + 8]
        data = png[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", data)
        elif kind == b"IDAT":
            idat += data
        pos += 12 + length
    if header is None:
        raise ValueError("PNG without IHDR")
    width, height, depth, color, _, _, interlace = header
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(color)
    if depth != 8 or channels is None or interlace:
        raise ValueError(f"unsupported PNG (depth {depth}, color type {color}, interlace {interlace})")
    raw = zlib.decompress(idat)
    stride = width * channels

    def rows() -> Iterator[bytes]:
        prev = bytearray(stride)
        for y in range(height):
            ftype = raw[y * (stride + 1)]
            line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
            if ftype == 1:
                for i in range(channels, stride):
                    line[i] = (line[i] + line[i - channels]) & 0xFF
            elif ftype == 2:
                for i in range(stride):
                    line[i] = (line[i] + prev[i]) & 0xFF
            elif ftype == 3:
                for i in range(stride):
                    left = line[i - channels] if i >= channels else 0
                    line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
            elif ftype == 4:
                for i in range(stride):
                    a = line[i - channels] if i >= channels else 0
                    b = prev[i]
                    c = prev[i - channels] if i >= channels else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
            yield bytes(line)
            prev = line

    return width, height, channels, rows()


def distinct_colors(png: bytes, limit: int = 16) -> int:
    """How many distinct pixel values the PNG holds, counting up to ``limit`` (1 means a blank image)."""
    _, _, channels, rows = png_rows(png)
    seen: set[bytes] = set()
    for row in rows:
        seen.update(row[i:i + channels] for i in range(0, len(row), channels))
        if len(seen) >= limit:
            return limit
    return len(seen)
