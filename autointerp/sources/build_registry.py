"""Rebuild ``autointerp/data/sae_registry.json`` from SAELens's ``pretrained_saes.yaml``.

Run from the repository root, with the team's shared data folder beside it::

    .venv/bin/python -m autointerp.sources.build_registry ../shared/data/sae-registry.json \
        [path/to/sae_lens/pretrained_saes.yaml]

The first argument is a snapshot of SAELens's table as JSON (Gemma Scope 1 and GPT-2 releases); the second
(default: the ``pretrained_saes.yaml`` of the installed ``sae-lens``, 6.54.12 when this was written) adds
Gemma Scope 2. Only the releases the address scheme covers are copied: Gemma Scope 2B/9B pt res/mlp/att, 9B
it res (per layer, every width and L0, with the canonical L0 marked from the "-canonical" releases), GPT-2
small (jb residual SAEs; OpenAI v5 32k/128k resid_post, mlp_out, attn_out in SAELens format), Gemma Scope 2
for the text-only Gemma 3 models (270M, the embedded subject, and 1B; pt releases), plus the embedded SAE of
this project. Rows are ``[layer, width, l0, neuronpedia id, canonical, path]`` with path null where it
follows the site's ``path_template``.

Gemma Scope 2 addresses: ``gemma3-270m/L12/gs2`` (residual stream, the 4 layers of the main release, widths
16k-1m, L0 small/medium/big), ``gemma3-270m/L6/gs2-all`` (every layer, 16k/262k, L0 small/big), and the
same with ``gs2-mlp[-all]`` (MLP output), ``gs2-att[-all]`` (attention, read at o_proj's input) and
``gs2-tc[-all]`` (transcoders, read at the MLP input). Their L0 is named as the release names it
(``l0_small``, ``l0_big_affine``, ...); the canonical one is the non-affine L0 closest to 100, as for
Gemma Scope. The 4B-27B releases are left out: those Gemma 3 models are multimodal checkpoints the subject
loader does not read yet.
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
# Gemma Scope 2: (family, subject, SAELens model name, {site: (release suffix, hook kind, d_in)})
_GS2_MODELS = [
    ("gemma3-270m", "gemma3-270m", "gemma-3-270m", "gemma-scope-2-270m-pt", 640, 1024),
    ("gemma3-1b", "google/gemma-3-1b-pt", "gemma-3-1b-pt", "gemma-scope-2-1b-pt", 1152, 1024),
]
_GS2_SITES = [
    # (site, release suffix, hook kind, reads the residual width (else the attention heads' width))
    ("gs2", "res", "resid_post", True),
    ("gs2-all", "res-all", "resid_post", True),
    ("gs2-mlp", "mlp", "mlp_out", True),
    ("gs2-mlp-all", "mlp-all", "mlp_out", True),
    ("gs2-att", "att", "attn_z", False),
    ("gs2-att-all", "att-all", "attn_z", False),
    ("gs2-tc", "transcoders", "mlp_in", True),
    ("gs2-tc-all", "transcoders-all", "mlp_in", True),
]
_GS2_PATH = re.compile(r"/layer_(\d+)_width_(\w+?)_l0_(\w+)$")
_HOOK_ID = re.compile(r"^blocks\.(\d+)\.hook_(\w+)$")


def build(
    snapshot: dict[str, Any], embedded: dict[str, Any] | None = None, gemma_scope_2: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The registry from a SAELens table snapshot, the embedded SAE's site, and (optionally) a SAELens table
    that lists Gemma Scope 2 (``gemma_scope_2``; the same shape: release name -> {repo_id, saes, ...})."""
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
    if gemma_scope_2:
        sites.extend(_gemma_scope_2_sites(gemma_scope_2))
    if embedded:
        sites.append(embedded)
    return {
        "_provenance": {
            "source": "SAELens pretrained_saes.yaml (github.com/jbloomAus/SAELens, sae_lens/pretrained_saes.yaml), "
            "snapshot of 2026 as JSON (shared/data/sae-registry.json), and for Gemma Scope 2 the yaml of "
            "sae-lens 6.54.12; subset and reshaped by autointerp/sources/build_registry.py",
            "licence": "MIT (SAELens); the SAE weights themselves carry their own licences (Gemma Scope: CC-BY-4.0)",
            "revisions": "hub revisions are 'main' (revision_pinned false): no commit hashes were available "
            "offline; resolve_source(address, revision=COMMIT) pins one",
            "row_columns": ["layer", "width", "l0", "neuronpedia", "canonical", "path"],
            "canonical": "Gemma Scope: the average_l0 closest to 100 for each layer and width, from the "
            "'-canonical' releases; single-SAE widths are canonical. Gemma Scope 2: the non-affine, "
            "first-seed L0 closest to 100 (l0_medium in the main releases, l0_big in the -all ones)",
        },
        "sites": sites,
    }


def _gemma_scope_2_sites(table: dict[str, Any]) -> list[dict[str, Any]]:
    """Sites of the Gemma Scope 2 releases of ``_GS2_MODELS`` found in ``table`` (a SAELens release table)."""
    sites: list[dict[str, Any]] = []
    for family, subject, model, prefix, d_model, d_heads in _GS2_MODELS:
        for site, suffix, hook, residual in _GS2_SITES:
            release = f"{prefix}-{suffix}"
            rel = table.get(release)
            if rel is None:
                continue
            rows: list[list[Any]] = []
            for s in rel["saes"]:
                m = _GS2_PATH.search(s["path"])
                if not m:
                    continue
                layer, width, label = int(m.group(1)), m.group(2), m.group(3)
                rows.append([layer, width, float(s["l0"]), s.get("neuronpedia"), False, s["path"], label])
            by_cell: dict[tuple[int, str], list[list[Any]]] = {}
            for r in rows:
                by_cell.setdefault((r[0], r[1]), []).append(r)
            for cell in by_cell.values():
                plain = [r for r in cell if r[6] in ("small", "medium", "big")] or cell
                min(plain, key=lambda r: (abs(r[2] - 100), r[2]))[4] = True
            rows.sort(key=lambda r: (r[0], _width_n(r[1]), r[2], r[6]))
            sites.append(
                {
                    "family": family,
                    "site": site,
                    "model": model,
                    "subject": subject,
                    "repo_id": rel["repo_id"],
                    "revision": "main",
                    "revision_pinned": False,
                    "format": "gemma_scope_2",
                    "hook": hook,
                    "d_in": d_model if residual else d_heads,
                    "default_width": "16k",
                    "l0_names": True,
                    "release": release,
                    "saes": [r[:6] for r in rows],
                }
            )
    return sites


def _width_n(label: object) -> int:
    return WIDTHS.get(str(label), 0)


EMBEDDED_DIR = Path(__file__).resolve().parent.parent.parent / "datasets" / "embedded-sae"


def _installed_saelens_table() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("sae_lens")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "pretrained_saes.yaml"
    return path if path.is_file() else None


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
        "release": "autointerp embedded SAE (trained by this project, not a Gemma Scope release)",
        "saes": [[6, width, l0, None, True, "L6_resid_post"]],
    }


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    snapshot = json.loads(Path(args[0]).read_text())
    yaml_path = Path(args[1]) if len(args) > 1 else _installed_saelens_table()
    if yaml_path is None:
        raise SystemExit(
            "no SAELens pretrained_saes.yaml: pass its path as the second argument, or install sae-lens==6.54.12"
        )
    import yaml

    data = build(snapshot, embedded_site(), yaml.safe_load(yaml_path.read_text()))
    # one row per line keeps the file diffable and small
    text = json.dumps(data, indent=1)
    text = re.sub(r"\[\n\s+([^\[\]{}]*?)\n\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text + "\n")


if __name__ == "__main__":
    main()
