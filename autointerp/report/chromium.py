"""Drive a real headless Chromium over the DevTools protocol: for the report's browser tests and its
benchmark (no browser download: Debian's ``chromium`` package; needs the ``websocket-client`` package).

:func:`launch` starts Chromium with a fresh profile on a free loopback port and yields a :class:`Cdp`
client of its first page; the process is stopped on exit.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def find_chromium() -> str | None:
    """The Chromium executable on PATH, or None."""
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cdp:
    """A minimal DevTools-protocol client over one page websocket."""

    def __init__(self, ws_url: str) -> None:
        websocket = importlib.import_module("websocket")
        self.ws = websocket.create_connection(ws_url, timeout=120, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        self.next_id += 1
        mid = self.next_id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params or {}}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return dict(msg.get("result", {}))
            if "method" in msg:
                self.events.append(msg)

    def wait_event(self, method: str, timeout: float = 60.0) -> dict[str, Any]:
        """The next ``method`` event not waited for before (each event is returned once)."""
        deadline = time.monotonic() + timeout
        for e in self.events:
            if e["method"] == method and not e.get("_seen"):
                e["_seen"] = True
                return e
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if "method" in msg:
                self.events.append(msg)
                if msg["method"] == method:
                    msg["_seen"] = True
                    return msg
        raise TimeoutError(method)

    def eval(self, expr: str) -> Any:
        """Evaluate ``expr`` in the page (awaiting a promise) and return its value."""
        r = self.send("Runtime.evaluate", {"expression": expr, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise RuntimeError(f"JS error in {expr!r}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def drain(self) -> None:
        """Collect pending events (console messages, dialogs) after a round trip."""
        self.eval("1")

    def errors(self) -> list[str]:
        """Uncaught exceptions, console errors and log errors seen so far."""
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.exceptionThrown":
                out.append(json.dumps(p.get("exceptionDetails", {}))[:500])
            elif e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(json.dumps(p.get("args", []))[:500])
            elif e["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append(str(p["entry"].get("text"))[:500])
        return out

    def close(self) -> None:
        self.ws.close()


@contextmanager
def launch(workdir: Path, *, window: str = "1280,1000", before_scripts: str | None = None) -> Iterator[Cdp]:
    """A headless Chromium (profile and HOME under ``workdir``) and a client of its page, with the Page,
    Runtime and Log domains enabled; ``before_scripts`` runs before any page script on every page."""
    exe = find_chromium()
    if exe is None:
        raise RuntimeError("chromium is not installed (Debian: apt-get install -y chromium)")
    port = _free_port()
    proc = subprocess.Popen(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-dev-shm-usage", f"--window-size={window}",
         f"--user-data-dir={workdir / 'profile'}", f"--remote-debugging-port={port}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "HOME": str(workdir)},
    )
    try:
        ws_url = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and ws_url is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                    pages = [p for p in json.loads(r.read()) if p.get("type") == "page"]
                if pages:
                    ws_url = pages[0]["webSocketDebuggerUrl"]
            except OSError:
                if proc.poll() is not None:
                    status = proc.returncode
                    raise RuntimeError(f"chromium exited with status {status} before DevTools came up") from None
                time.sleep(0.2)
        if ws_url is None:
            raise RuntimeError("chromium's DevTools endpoint did not come up within 60 s")
        cdp = Cdp(ws_url)
        for domain in ("Page", "Runtime", "Log"):
            cdp.send(f"{domain}.enable")
        if before_scripts:
            cdp.send("Page.addScriptToEvaluateOnNewDocument", {"source": before_scripts})
        try:
            yield cdp
        finally:
            cdp.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
