"""The HTML report in a real headless Chromium, driven over the DevTools protocol (no downloads).

Needs Debian's ``chromium`` (``apt-get install -y chromium``) and the ``websocket-client`` package;
skips with the reason when either is missing. The client is :mod:`autointerp.report.chromium` (the
benchmark uses it too).
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from autointerp.report import build_report
from autointerp.report.chromium import Cdp, find_chromium, launch
from autointerp.report.synthetic import EVIL_TOKENS, write_synthetic_run

CHROMIUM = find_chromium()
websocket = pytest.importorskip("websocket", reason="websocket-client is not installed (pip install websocket-client)")
if CHROMIUM is None and os.environ.get("AUTOINTERP_REQUIRE_BROWSER"):
    raise RuntimeError("AUTOINTERP_REQUIRE_BROWSER is set (CI) but chromium is not installed: apt-get install chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install -y chromium)"
)

# Runs before any page script: records alert/confirm/prompt calls instead of showing dialogs.
HOOK = """
window.__pwned = [];
for (const name of ['alert', 'confirm', 'prompt']) {
  window[name] = function (msg) { window.__pwned.push(name + ':' + String(msg)); };
}
"""


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Cdp]:
    with launch(tmp_path, before_scripts=HOOK) as cdp:
        yield cdp


def _open(browser: Cdp, url: str) -> None:
    browser.send("Page.navigate", {"url": url})
    browser.wait_event("Page.loadEventFired")
    assert browser.eval("document.body.dataset.ready") == "1", "the report script did not finish rendering"


def _rows(browser: Cdp) -> list[list[str]]:
    """The rendered rows of the (virtual) list, in display order: cell texts."""
    return list(browser.eval(
        "Array.from(document.querySelectorAll('#list .row')).sort((a, b) => a.dataset.pos - b.dataset.pos)"
        ".map(r => Array.from(r.children).map(c => c.textContent))"
    ))


def _col(browser: Cdp, key: str) -> int:
    return int(browser.eval(
        f"Array.from(document.querySelectorAll('#list-head .th')).findIndex(h => h.dataset.key === '{key}')"
    ))


def test_report_in_chromium(browser: Cdp, tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "run", n_features=6, evil_tokens=True, vocab=True, output_scores=True)
    other = write_synthetic_run(tmp_path / "other", n_features=6, seed=3, quality=0.2)
    page = build_report(run.path, tmp_path / "report.html", compare=other.path)
    _open(browser, page.resolve().as_uri())
    assert len(_rows(browser)) == 6

    # Sorting: the list starts sorted by correlation, descending; clicking its header flips it.
    col = _col(browser, "s:correlation")
    desc = [r[col] for r in _rows(browser)]
    browser.eval("document.querySelector('#list-head .th[data-key=\"s:correlation\"]').click()")
    asc = [r[col] for r in _rows(browser)]
    defined_desc = [float(x) for x in desc if x != "undefined"]
    defined_asc = [float(x) for x in asc if x != "undefined"]
    assert defined_desc == sorted(defined_desc, reverse=True) and len(defined_desc) == 5
    assert defined_asc == sorted(defined_asc)
    assert desc[-1] == asc[-1] == "undefined", "undefined scores must sort last in both directions"
    assert browser.eval("document.querySelector('#list-head .th[data-key=\"s:correlation\"]')"
                        ".getAttribute('aria-sort')") == "ascending"

    # Filter by label text and by a score condition.
    assert browser.eval("window.__report.setFilter('rivers')") == 1
    assert browser.eval("window.__report.setFilter('correlation>0.5 detection>0')") == 5
    assert browser.eval("window.__report.setFilter('nosuchfield>1')") == 6
    assert "unknown field" in browser.eval("document.getElementById('count').textContent")
    browser.eval("window.__report.setFilter('')")

    # Keyboard: focus the list, ArrowDown opens the first row's card, j the next one.
    browser.eval("document.getElementById('list').focus()")
    for key in ("ArrowDown", "j"):
        browser.send("Input.dispatchKeyEvent", {"type": "keyDown", "key": key, "code": "KeyJ" if key == "j" else key,
                                                "windowsVirtualKeyCode": 74 if key == "j" else 40})
        browser.send("Input.dispatchKeyEvent", {"type": "keyUp", "key": key})
    browser.eval("new Promise(r => setTimeout(r, 100))")
    order = [r[0] for r in _rows(browser)]
    assert browser.eval("document.querySelector('#list .row.cursor').dataset.pos") == "1"
    assert browser.eval("document.querySelector('#card .feature-id').textContent").endswith(":" + order[1])

    # Open feature 0 (the one with hostile tokens): label, scores, examples true | simulated side by side.
    browser.eval("window.__report.openId('synthetic/L0/mlp_neurons:0')")
    assert browser.eval("document.querySelector('#card .feature-label').textContent") == (
        "names of European capital cities"
    )
    assert browser.eval("document.querySelectorAll('#card .split').length") == 4
    # 9 windows with true activations; the 7 held-out ones also simulated (train windows are not)
    assert browser.eval("document.querySelectorAll('#card .pair-grid .tokens').length") == 9 + 7
    assert browser.eval("document.querySelector('#card .compare-label').textContent").startswith("other: ")
    assert browser.eval("decodeURIComponent(location.hash)") == "#synthetic/L0/mlp_neurons:0"
    texts = browser.eval("Array.from(document.querySelectorAll('#card .tok')).map(t => t.textContent)")
    assert "<script>alert(1)</script>" in texts and '"><img src=x onerror=alert(1)>' in texts
    # The vocabulary projection (promoted / suppressed tokens), hostile tokens shown as text.
    promoted = browser.eval("Array.from(document.querySelectorAll('#card .vocab-top .vtok')).map(t => t.textContent)")
    assert [p.strip() for p in promoted[:3]] == list(EVIL_TOKENS) and len(promoted) == 8
    assert browser.eval("document.querySelectorAll('#card .vocab-bottom .vtok').length") == 5
    assert browser.eval("document.querySelector('#card details.prompts pre').textContent") == (
        "names of European capital cities"
    )
    browser.eval("document.querySelector('#card .toggle').click()")
    assert "baseline" in browser.eval("document.querySelectorAll('#card .pair-head')[1].textContent")

    # The undefined correlation of feature 1 shows as "undefined" with its reason as a tooltip.
    tip = browser.eval("Array.from(document.querySelectorAll('#list .undef')).map(td => td.title)")
    assert any("constant" in t for t in tip)

    # Overview: one histogram per score, explained vs baseline, undefined reasons, usage per role.
    browser.eval("window.__report.show('overview')")
    assert browser.eval("document.querySelectorAll('#view-overview .ov-score').length") == 3
    assert browser.eval("document.querySelectorAll('#view-overview .ov-score .bin').length") == 3 * 24
    ov = browser.eval("document.getElementById('view-overview').textContent")
    assert "1 × true activations are constant" in ov and "failed simulations" in ov
    # Input against output score: one point per feature with both; detection (all 6) first, the x selector
    # switches to correlation (feature 1's is undefined: 5 points); a point opens its feature.
    assert browser.eval("document.querySelectorAll('#view-overview svg.scatter circle.pt').length") == 6
    assert "6 of 6 features have both scores; Spearman rho" in browser.eval(
        "document.querySelector('#view-overview .scatter-box').textContent")
    browser.eval("(() => { const s = document.getElementById('scatter-x'); s.value = 'correlation';"
                 " s.dispatchEvent(new Event('change')); })()")
    assert browser.eval("document.querySelectorAll('#view-overview svg.scatter circle.pt').length") == 5
    browser.eval("document.querySelector('#view-overview svg.scatter circle.pt')"
                 ".dispatchEvent(new MouseEvent('click'))")
    browser.eval("new Promise(r => setTimeout(r, 100))")
    assert browser.eval("document.querySelector('#card .feature-id').textContent").startswith("synthetic/L0/")
    browser.eval("window.__report.show('overview')")
    # Compare: paired differences and both labels side by side.
    browser.eval("window.__report.show('compare')")
    cmp_text = browser.eval("document.getElementById('view-compare').textContent")
    assert "Δ correlation" in cmp_text and "n=5 features scored in both" in cmp_text
    assert browser.eval("document.querySelectorAll('#view-compare table.compare-table tr').length") == 1 + 5

    # Nothing hostile ran: no dialogs, no injected elements, no console errors.
    browser.drain()
    assert browser.eval("window.__pwned") == []
    assert not [e for e in browser.events if e["method"] == "Page.javascriptDialogOpening"]
    assert browser.eval("document.querySelectorAll('img').length") == 0
    assert browser.eval("document.scripts.length") == 3
    assert browser.errors() == []

    # A link with a feature id in the hash opens that feature.
    browser.eval("location.hash = 'synthetic%2FL0%2Fmlp_neurons%3A2'")
    browser.send("Page.reload")
    browser.wait_event("Page.loadEventFired")
    assert browser.eval("document.body.dataset.ready") == "1"
    browser.eval("new Promise(r => setTimeout(r, 50))")
    assert browser.eval("document.querySelector('#card .feature-id').textContent") == "synthetic/L0/mlp_neurons:2"
    assert browser.eval("window.__pwned") == [] and browser.errors() == []

    shot = browser.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": False})
    png = tmp_path / "report.png"
    png.write_bytes(base64.b64decode(shot["data"]))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    if os.environ.get("AUTOINTERP_SCREENSHOT_DIR"):
        dest = Path(os.environ["AUTOINTERP_SCREENSHOT_DIR"])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(png, dest / "report.png")


def test_16384_features_served_as_a_folder(browser: Cdp, tmp_path: Path) -> None:
    """The large-run layout in Chromium: 16,384 features, list rendered virtually, filter and sort over all
    of them, cards fetched from chunks over HTTP (labels and scores only, so the test stays fast; the
    benchmark measures a run with examples)."""
    import threading

    from autointerp.report import report_data, write_report
    from autointerp.report.serve import make_server, url_of
    from autointerp.report.synthetic import synthetic_rundata

    n = 16384
    page = write_report(report_data(synthetic_rundata(n)), tmp_path / "site", "folder")
    assert len(list((page.parent / "chunks").glob("*.json"))) == n // 64
    server = make_server(page.parent, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _open(browser, url_of(server))
        assert browser.eval("document.getElementById('count').textContent") == f"{n} of {n} features"
        rendered = len(_rows(browser))
        assert 0 < rendered < 200, "only the visible rows are in the DOM"
        # Filter: a label word, then a score condition, over all 16,384 features.
        assert browser.eval("window.__report.setFilter('variant 11234)')") == 1
        want = browser.eval("window.__report.setFilter('correlation>0.8')")
        assert 0 < want < n
        browser.eval("window.__report.setFilter('')")
        # Jump to the end of the list and open the last row's card: its chunk is fetched on demand.
        browser.eval("document.getElementById('list').focus()")
        browser.send("Input.dispatchKeyEvent",
                     {"type": "keyDown", "key": "End", "code": "End", "windowsVirtualKeyCode": 35})
        browser.eval("new Promise(r => setTimeout(r, 300))")
        last = _rows(browser)[-1]
        assert last[_col(browser, "s:correlation")] == "undefined", "undefined scores sort last"
        assert browser.eval("document.querySelector('#card .feature-id').textContent").endswith(":" + last[0])
        assert browser.eval("window.__report.perf.cards_opened") >= 1
        browser.eval("window.__report.openId('synthetic/L0/mlp_neurons:16383')")
        assert browser.eval("document.querySelector('#card .feature-label').textContent") == (
            "tokens after a comma (variant 16383)"
        )
        browser.drain()
        assert browser.errors() == []
    finally:
        server.shutdown()
        server.server_close()
