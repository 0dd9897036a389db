"""The feature browser on synthetic runs (no models, no LLM): build cost, and in a real headless Chromium
the time to first paint of the list, filter time, card-open time and page memory.

Each synthetic feature has 3 top + 2 quantile + 2 random + 2 train windows of ``--tokens`` tokens, a
selected and a shuffled-baseline explanation with simulations of every held-out window, and two scores.

For each ``--features N``:

- build: reading the run, building the index and the cards, writing the page or folder (seconds, MB);
- with ``--browser``: the report (a single page up to 1,000 features, else the folder served by
  ``autointerp.report.serve`` on 127.0.0.1) opened in Chromium. Times are measured inside the page with
  ``performance.now()``:
  - ``list``: navigation start -> the list's first rows are in the DOM (the page script ends there),
    and Chromium's first-contentful-paint;
  - ``filter``: from setting the filter to the next animation frame (filter + sort + virtual list
    render), median and max over several queries (text and score conditions);
  - ``card``: from the request to the next frame after the card is rendered, for cards in chunks not
    loaded yet (``cold``: chunk fetched/parsed) and in loaded chunks (``warm``);
  - ``memory``: JS heap used and DOM nodes (DevTools ``Performance.getMetrics``).

    .venv/bin/python benchmarks/bench_report.py --features 1000 16384 --browser [--run-root DIR]

``--run-root DIR`` keeps the synthetic runs there and reuses them on the next call (writing 16,384
features takes minutes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from autointerp.report.report import SINGLE_FILE_MAX, read_run, report_data, write_report
from autointerp.report.synthetic import write_synthetic_run

FILTERS = ("city", "variant", "river", "correlation>0.5", "correlation>0.8 detection>0.7", "frequency<0.001",
           "max>5 the", "")
FRAME = "new Promise(r => requestAnimationFrame(() => setTimeout(r, 0)))"


def build(run: Path, out: Path) -> tuple[Path, dict[str, float]]:
    t0 = time.perf_counter()
    data, warnings = read_run(run)
    t1 = time.perf_counter()
    doc = report_data(data, warnings=warnings)
    t2 = time.perf_counter()
    layout = "file" if len(doc["cards"]) <= SINGLE_FILE_MAX else "folder"
    page = write_report(doc, out / ("report.html" if layout == "file" else "report"), layout)
    t3 = time.perf_counter()
    size = page.stat().st_size if layout == "file" else sum(p.stat().st_size for p in page.parent.rglob("*"))
    return page, {"read_s": t1 - t0, "data_s": t2 - t1, "write_s": t3 - t2, "mb": size / 1e6}


def measure(page: Path, workdir: Path, n: int) -> dict[str, Any]:
    from autointerp.report.chromium import launch
    from autointerp.report.serve import make_server, url_of

    server = None
    if page.name == "index.html":
        server = make_server(page.parent, 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = url_of(server)
    else:
        url = page.resolve().as_uri()
    try:
        with launch(workdir, window="1400,1000") as cdp:
            cdp.send("Performance.enable")
            cdp.send("Page.navigate", {"url": url})
            cdp.wait_event("Page.loadEventFired", timeout=300)
            assert cdp.eval("document.body.dataset.ready") == "1", "the page did not finish rendering"
            assert cdp.eval("document.querySelectorAll('#list .row').length") > 0
            list_at = cdp.eval("window.__report.perf.list_at")
            fcp = cdp.eval("(async () => { await new Promise(r => setTimeout(r, 200)); const e = performance"
                           ".getEntriesByType('paint').find(p => p.name === 'first-contentful-paint');"
                           " return e ? e.startTime : null; })()")
            filters = []
            for q in FILTERS:
                ms = cdp.eval(f"(async () => {{ const t = performance.now(); "
                              f"window.__report.setFilter({json.dumps(q)}); "
                              f"await {FRAME}; return performance.now() - t; }})()")
                filters.append(float(ms))
            cs = int(cdp.eval("window.__report.chunk_size"))
            cold_ids = [min(n - 1, k * cs + 3) for k in range(0, max(1, n // cs), max(1, n // cs // 8))][:8]
            cold, warm = [], []
            for i in cold_ids:
                for bucket, j in ((cold, i), (warm, min(n - 1, i + 1))):
                    ms = cdp.eval(f"(async () => {{ const t = performance.now(); await window.__report.open({j});"
                                  f" await {FRAME}; return performance.now() - t; }})()")
                    bucket.append(float(ms))
            assert cdp.eval("document.querySelectorAll('#card .feature-id').length") == 1
            metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
            errors = cdp.errors()
            assert not errors, errors
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    return {
        "list_ms": list_at,
        "fcp_ms": fcp,
        "filter_median_ms": statistics.median(filters),
        "filter_max_ms": max(filters),
        "card_cold_median_ms": statistics.median(cold),
        "card_cold_max_ms": max(cold),
        "card_warm_median_ms": statistics.median(warm),
        "heap_used_mb": metrics.get("JSHeapUsedSize", 0) / 1e6,
        "heap_total_mb": metrics.get("JSHeapTotalSize", 0) / 1e6,
        "dom_nodes": int(metrics.get("Nodes", 0)),
    }


def sweep_tables(root: Path, n: int) -> None:
    """tidy_table + aggregate_table + paired_table (2000 bootstrap resamples) over 4 cells x n features."""
    from autointerp.sweep import cell_dir, expand_grid, spec_from_dict, write_index
    from autointerp.sweep_tables import aggregate_table, paired_table, tidy_table

    spec = spec_from_dict({"grid": {"explainer": ["a", "b"], "n_top_examples": [5, 10]}})
    cells = expand_grid(spec)
    for k, c in enumerate(cells):
        write_synthetic_run(cell_dir(root, c), n_features=n, seed=k, quality=0.3 + 0.2 * k, n_tokens=16)
    write_index(root, spec, cells)
    t = time.perf_counter()
    tidy = tidy_table(root, cells)
    t_tidy = time.perf_counter() - t
    t = time.perf_counter()
    aggregate_table(tidy, n_boot=2000)
    t_agg = time.perf_counter() - t
    t = time.perf_counter()
    paired_table(tidy, n_boot=2000)
    t_pair = time.perf_counter() - t
    print(f"tables  features={n:5d} x 4 cells  tidy {t_tidy:5.2f} s  aggregate {t_agg:5.2f} s  "
          f"paired {t_pair:5.2f} s  (2 scores, 2000 resamples)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", type=int, nargs="+", default=[1000, 16384])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--browser", action="store_true", help="also measure the page in headless Chromium")
    ap.add_argument("--run-root", type=Path, default=None, help="keep (and reuse) the synthetic runs here")
    ap.add_argument("--tables", action="store_true", help="also time the sweep tables over 4 cells x N features")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-report-") as d:
        tmp = Path(d)
        root = args.run_root or tmp
        for n in args.features:
            run = root / f"synthetic-{n}x{args.tokens}"
            if not (run / "manifest.json").exists():
                t = time.perf_counter()
                write_synthetic_run(run, n_features=n, n_tokens=args.tokens)
                print(f"synthetic run  features={n:6d}  written in {time.perf_counter() - t:7.1f} s", flush=True)
            page, b = build(run, tmp / f"out{n}")
            print(f"build  features={n:6d}  read {b['read_s']:6.1f} s  index+cards {b['data_s']:6.1f} s  "
                  f"write {b['write_s']:6.1f} s  {b['mb']:7.1f} MB ({page.name})", flush=True)
            if args.browser:
                m = measure(page, tmp / f"chromium{n}", n)
                print(f"chromium features={n:6d}  list {m['list_ms']:7.0f} ms (first contentful paint "
                      f"{m['fcp_ms'] or float('nan'):.0f} ms)  filter median {m['filter_median_ms']:5.1f} ms "
                      f"max {m['filter_max_ms']:5.1f} ms  card cold median {m['card_cold_median_ms']:5.1f} ms "
                      f"max {m['card_cold_max_ms']:5.1f} ms, warm {m['card_warm_median_ms']:5.1f} ms  "
                      f"JS heap {m['heap_used_mb']:6.1f} MB used / {m['heap_total_mb']:6.1f} MB  "
                      f"DOM nodes {m['dom_nodes']}", flush=True)
            if args.tables:
                sweep_tables(tmp / f"sweep{n}", n)


if __name__ == "__main__":
    main()
