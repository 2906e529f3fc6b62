"""Headless Chromium driven over the DevTools protocol: open a page, wait for its text, save
a screenshot. Used by the viewer's browser test and for the README's screenshots:

    python -m src.viewer_app.browser http://127.0.0.1:8501/ docs/viewer_scan.png --wait-for HC

It runs the system's ``chromium`` (Debian's package; nothing is downloaded) and talks to it
with ``websockets``, which Streamlit already depends on, so no browser driver is needed.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from websockets.sync.client import connect

CHROMIUM_NAMES = ("chromium", "chromium-browser")
# True when a Streamlit page has finished drawing: its script is not running, no element is
# still a loading placeholder, and every image has loaded.
_DRAWN = """
document.querySelector('[data-testid=stApp]')?.dataset.testScriptState === 'notRunning'
&& !document.querySelector('[data-testid=stSkeleton]')
&& [...document.images].every(image => image.complete && image.naturalWidth > 0)
"""


def find_chromium() -> str | None:
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


class Browser:
    """One headless Chromium with one tab; use as a context manager."""

    def __init__(self, size: tuple[int, int] = (1400, 1700), timeout: float = 30.0):
        binary = find_chromium()
        if binary is None:
            raise FileNotFoundError(
                "no chromium on PATH: install Debian's package (apt-get install chromium; "
                "`make viewer-check` does)"
            )
        self._profile = tempfile.TemporaryDirectory(prefix="sonoseg-chromium-")
        self._process = subprocess.Popen(
            [
                binary,
                "--headless",
                "--no-sandbox",  # needed as root in containers; the pages are our own
                "--disable-gpu",
                "--hide-scrollbars",
                "--remote-debugging-port=0",
                f"--user-data-dir={self._profile.name}",
                f"--window-size={size[0]},{size[1]}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._connection = ExitStack()
        try:
            self._socket = self._connection.enter_context(
                connect(self._page_socket(timeout), max_size=None, open_timeout=timeout)
            )
        except BaseException:
            self.close()
            raise
        self._next_id = 0

    def _page_socket(self, timeout: float) -> str:
        """The tab's DevTools address, once Chromium has written its port."""
        port_file = Path(self._profile.name) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if port_file.is_file() and port_file.read_text().strip():
                port = port_file.read_text().split()[0]
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as reply:
                    pages = [t for t in json.load(reply) if t["type"] == "page"]
                if pages:
                    return pages[0]["webSocketDebuggerUrl"]
            if self._process.poll() is not None:
                raise RuntimeError(f"chromium exited with code {self._process.returncode}")
            time.sleep(0.1)
        raise TimeoutError(f"chromium gave no DevTools port within {timeout:.0f} s")

    def call(self, method: str, **params) -> dict:
        """One DevTools command and its result (events in between are skipped)."""
        self._next_id += 1
        self._socket.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._socket.recv())
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def text(self) -> str:
        """The page's visible text (``innerText``)."""
        result = self.call(
            "Runtime.evaluate", expression="document.body.innerText", returnByValue=True
        )
        return result["result"].get("value") or ""

    def wait_for(self, texts: Sequence[str], timeout: float = 60.0, settle: float = 1.0) -> str:
        """The page text once it holds every one of ``texts`` and has finished drawing (no
        script running, no placeholder left, every image loaded), ``settle`` seconds later;
        TimeoutError with the text seen."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            drawn = self.call("Runtime.evaluate", expression=_DRAWN, returnByValue=True)
            if all(t in text for t in texts) and drawn["result"].get("value"):
                time.sleep(settle)
                return self.text()
            if time.monotonic() > deadline:
                raise TimeoutError(f"page never showed {list(texts)}; it shows:\n{text[:3000]}")
            time.sleep(0.25)

    def screenshot(self, path: str | Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        self._connection.close()
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._profile.cleanup()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Screenshot a page in headless Chromium.")
    parser.add_argument("url")
    parser.add_argument("png", type=Path)
    parser.add_argument("--wait-for", action="append", default=[], help="text to wait for")
    parser.add_argument("--size", type=int, nargs=2, default=(1400, 1700), metavar=("W", "H"))
    args = parser.parse_args(argv)
    with Browser(tuple(args.size)) as browser:
        browser.open(args.url)
        browser.wait_for(args.wait_for)
        print(browser.screenshot(args.png))


if __name__ == "__main__":
    main()
