"""Report and sweep-table costs on synthetic run directories (no models, no LLM).

Measures, for runs of N features (each: 3 top + 2 quantile + 2 random + 2 train examples of 64 tokens,
a selected and a baseline explanation with simulations and scores):

- ``build_report``: seconds and page size (bytes, and bytes per feature);
- optionally (``--browser``) the time headless Chromium takes to load and render the page;
- sweep tables: ``tidy_table`` + ``aggregate_table`` + ``paired_table`` (2000 bootstrap resamples) over
  4 cells x N features.

    .venv/bin/python benchmarks/bench_report.py [--features 100 1000] [--browser]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from autointerp.report import build_report
from autointerp.report.synthetic import write_synthetic_run
from autointerp.sweep import (
    aggregate_table,
    cell_dir,
    expand_grid,
    paired_table,
    spec_from_dict,
    tidy_table,
    write_index,
)


def browser_seconds(page: Path, tmp: Path) -> float | None:
    """Wall time of `chromium --headless --dump-dom` on the page (start-up included), or None."""
    exe = shutil.which("chromium")
    if exe is None:
        return None
    t = time.perf_counter()
    subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp / 'profile'}", "--dump-dom",
         page.resolve().as_uri()],
        check=True, capture_output=True, timeout=300,
    )
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--browser", action="store_true", help="also time headless Chromium rendering the page")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-report-") as d:
        tmp = Path(d)
        blank = tmp / "blank.html"
        blank.write_text("<!DOCTYPE html><title>x</title>")
        base = browser_seconds(blank, tmp) if args.browser else None
        for n in args.features:
            run = write_synthetic_run(tmp / f"run{n}", n_features=n, n_tokens=64)
            t = time.perf_counter()
            page = build_report(run.path)
            build_s = time.perf_counter() - t
            size = page.stat().st_size
            line = (f"report  features={n:5d}  build {build_s:6.2f} s  size {size / 1e6:6.2f} MB "
                    f"({size / n / 1e3:.1f} kB/feature)")
            if args.browser:
                b = browser_seconds(page, tmp)
                if b is not None and base is not None:
                    line += f"  chromium load+render {b:.2f} s (blank page {base:.2f} s)"
            print(line, flush=True)

            spec = spec_from_dict({"grid": {"explainer": ["a", "b"], "n_top_examples": [5, 10]}})
            cells = expand_grid(spec)
            root = tmp / f"sweep{n}"
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


if __name__ == "__main__":
    main()
