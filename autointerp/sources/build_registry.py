"""Rebuild ``autointerp/data/sae_registry.json`` from a SAELens ``pretrained_saes.yaml`` snapshot (as JSON).

    .venv/bin/python -m autointerp.sources.build_registry /work/shared/data/sae-registry.json

Only the releases the address scheme covers are copied: Gemma Scope 2B/9B pt res/mlp/att, 9B it res
(per layer, every width and L0, with the canonical L0 marked from the "-canonical" releases) and GPT-2
small (jb residual SAEs; OpenAI v5 32k/128k resid_post, mlp_out, attn_out in SAELens format), plus the
embedded SAE of this project. Rows are ``[layer, width, l0, neuronpedia id, canonical, path]`` with path
null where it follows the site's ``path_template``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from autointerp.sources.registry import WIDTHS

OUT = Path(__file__).resolve().parent.parent / "data" / "sae_registry.json"

# (family, site, release, hook kind, d_in, format, default width)
_GEMMA = [
    ("gemma2-2b", "res", "gemma-scope-2b-pt-res", "resid_post", 2304, "16k"),
    ("gemma2-2b", "mlp", "gemma-scope-2b-pt-mlp", "mlp_out", 2304, "16k"),
    ("gemma2-2b", "att", "gemma-scope-2b-pt-att", "attn_z", 2048, "16k"),
    ("gemma2-9b", "res", "gemma-scope-9b-pt-res", "resid_post", 3584, "16k"),
    ("gemma2-9b", "mlp", "gemma-scope-9b-pt-mlp", "mlp_out", 3584, "16k"),
    ("gemma2-9b", "att", "gemma-scope-9b-pt-att", "attn_z", 4096, "16k"),
    ("gemma2-9b-it", "res", "gemma-scope-9b-it-res", "resid_post", 3584, "16k"),
]
_GPT2 = [
    # (site, [(release, width label)], hook kind, default width)
    ("res", [("gpt2-small-res-jb", "24k")], "resid_pre", "24k"),
    (
        "res-post",
        [("gpt2-small-resid-post-v5-32k", "32k"), ("gpt2-small-resid-post-v5-128k", "128k")],
        "resid_post",
        "32k",
    ),
    ("mlp", [("gpt2-small-mlp-out-v5-32k", "32k"), ("gpt2-small-mlp-out-v5-128k", "128k")], "mlp_out", "32k"),
    ("att", [("gpt2-small-attn-out-v5-32k", "32k"), ("gpt2-small-attn-out-v5-128k", "128k")], "attn_out", "32k"),
]
_MODELS = {
    "gemma2-2b": "gemma-2-2b",
    "gemma2-9b": "gemma-2-9b",
    "gemma2-9b-it": "gemma-2-9b-it",
    "gpt2-small": "gpt2-small",
}
# what autointerp.subject.load_subject takes for each family (Hugging Face ids; the embedded name)
SUBJECTS = {
    "gemma2-2b": "google/gemma-2-2b",
    "gemma2-9b": "google/gemma-2-9b",
    "gemma2-9b-it": "google/gemma-2-9b-it",
    "gpt2-small": "openai-community/gpt2",
    "gemma3-270m": "gemma3-270m",
}
_PATH = re.compile(r"^layer_(\d+)/width_(\w+)/average_l0_(\d+)$")
_HOOK_ID = re.compile(r"^blocks\.(\d+)\.hook_(\w+)$")


def build(snapshot: dict[str, Any], embedded: dict[str, Any] | None = None) -> dict[str, Any]:
    sites: list[dict[str, Any]] = []
    for family, site, release, hook, d_in, default_width in _GEMMA:
        rel = snapshot[release]
        canon = {s["path"]: s.get("neuronpedia") for s in snapshot[release + "-canonical"]["saes"]}
        rows = []
        for s in rel["saes"]:
            m = _PATH.match(s["path"])
            if not m:  # embedding SAEs: not addressed
                continue
            layer, width, l0 = int(m.group(1)), m.group(2), int(m.group(3))
            is_canon = s["path"] in canon
            np_id = canon.get(s["path"]) if is_canon else s.get("neuronpedia")
            rows.append([layer, width, l0, np_id, is_canon, None])
        rows.sort(key=lambda r: (r[0], _width_n(r[1]), r[2]))
        sites.append(
            {
                "family": family,
                "site": site,
                "model": _MODELS[family],
                "subject": SUBJECTS[family],
                "repo_id": rel["repo_id"],
                "revision": "main",
                "revision_pinned": False,
                "format": "gemma_scope",
                "hook": hook,
                "d_in": d_in,
                "default_width": default_width,
                "path_template": "layer_{layer}/width_{width}/average_l0_{l0}",
                "release": release,
                "saes": rows,
            }
        )
    for site, releases, hook, default_width in _GPT2:
        rows, repos = [], {}
        for release, width in releases:
            rel = snapshot[release]
            repos[width] = rel["repo_id"]
            for s in rel["saes"]:
                m = _HOOK_ID.match(s["id"])
                if not m or m.group(2) != hook:  # e.g. the extra blocks.11.hook_resid_post in res-jb
                    continue
                l0 = s.get("l0")
                rows.append(
                    [int(m.group(1)), width, None if l0 is None else float(l0), s.get("neuronpedia"), True, s["path"]]
                )
        rows.sort(key=lambda r: (r[0], _width_n(r[1])))
        sites.append(
            {
                "family": "gpt2-small",
                "site": site,
                "model": "gpt2-small",
                "subject": SUBJECTS["gpt2-small"],
                "repo_ids": repos,
                "revision": "main",
                "revision_pinned": False,
                "format": "saelens",
                "hook": hook,
                "d_in": 768,
                "default_width": default_width,
                "release": ", ".join(r for r, _ in releases),
                "saes": rows,
            }
        )
    if embedded:
        sites.append(embedded)
    return {
        "_provenance": {
            "source": "SAELens pretrained_saes.yaml (github.com/jbloomAus/SAELens, sae_lens/pretrained_saes.yaml), "
            "snapshot of 2026 as JSON (shared/data/sae-registry.json); subset and reshaped by "
            "autointerp/sources/build_registry.py",
            "licence": "MIT (SAELens); the SAE weights themselves carry their own licences (Gemma Scope: CC-BY-4.0)",
            "revisions": "hub revisions are 'main' (revision_pinned false): no commit hashes were available "
            "offline; resolve_source(address, revision=COMMIT) pins one",
            "row_columns": ["layer", "width", "l0", "neuronpedia", "canonical", "path"],
            "canonical": "Gemma Scope: the average_l0 closest to 100 for each layer and width, from the "
            "'-canonical' releases; single-SAE widths are canonical",
        },
        "sites": sites,
    }


def _width_n(label: object) -> int:
    return WIDTHS.get(str(label), 0)


EMBEDDED_DIR = Path(__file__).resolve().parent.parent.parent / "datasets" / "embedded-sae"


def embedded_site() -> dict[str, Any] | None:
    """The registry entry of the SAE shipped in ``datasets/embedded-sae/`` (L0 from its sidecar), if built."""
    sidecar = EMBEDDED_DIR / "L6_resid_post" / "autointerp_sae.json"
    if not sidecar.is_file():
        return None
    meta = json.loads(sidecar.read_text())
    width = {2048: "2k", 4096: "4k"}[int(meta["config"]["n_features"])]
    l0 = round(float(meta["jumprelu_heldout"]["l0"]), 1)
    return {
        "family": "gemma3-270m",
        "site": "res",
        "model": "gemma3-270m",
        "subject": "gemma3-270m",
        "repo_ids": {},
        "revision": None,
        "revision_pinned": True,
        "format": "gemma_scope",
        "hook": "resid_post",
        "d_in": 640,
        "default_width": width,
        "local_dir": "embedded-sae",
        "release": "autointerp embedded SAE",
        "saes": [[6, width, l0, None, True, "L6_resid_post"]],
    }


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    snapshot = json.loads(Path(args[0]).read_text())
    data = build(snapshot, embedded_site())
    # one row per line keeps the file diffable and small
    text = json.dumps(data, indent=1)
    text = re.sub(r"\[\n\s+([^\[\]{}]*?)\n\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text + "\n")


if __name__ == "__main__":
    main()
