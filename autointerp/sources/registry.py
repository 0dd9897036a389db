"""Short addresses for public SAEs, the embedded SAE and model neurons.

Grammar::

    <family>/L<layer>[/<site>][/<width>][/l0_<N>]     an SAE, e.g. gemma2-9b/L20, gemma2-9b/L20/131k,
                                                      gemma2-9b/L20/16k/l0_114, gemma2-9b/L20/mlp,
                                                      gpt2-small/L8, gpt2-small/L8/res-post/128k,
                                                      gemma3-270m/L12/gs2 (Gemma Scope 2),
                                                      gemma3-270m/L6/gs2-all/262k/l0_small
    <model>/L<layer>/<hook kind>                      neurons / raw hook dims, e.g. gemma3-270m/L6/mlp_neurons

Defaults: site ``res``, the site's default width (16k for Gemma Scope), the canonical L0 (closest to 100).
Gemma Scope 2 names its L0s (``l0_small``, ``l0_medium``, ``l0_big``, ``l0_big_affine``): those names are
accepted, and so is the number where it picks one SAE. ``gemma3-270m/L6`` (site ``res``) is the embedded SAE
this project trained; the ``gs2*`` sites of ``gemma3-270m`` are Google DeepMind's Gemma Scope 2 release.
``embedded/gemma3-270m/L6`` is accepted for the embedded SAE and names the same source as
``gemma3-270m/L6``. Every SAE resolves to a :class:`SaeSpec` (pure data: repo, revision, files, format,
hook, sizes, Neuronpedia id); :func:`resolve_source` turns it into a loaded :class:`FeatureSource`, taking
the files from a local folder, ``$AUTOINTERP_SAE_DIR``, the project (embedded SAE) or the Hugging Face hub.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from autointerp.errors import UserError
from autointerp.hooks import KINDS, HookPoint
from autointerp.paths import datasets_dir
from autointerp.sources.base import FeatureSource

log = logging.getLogger(__name__)

SAE_DIR_ENV = "AUTOINTERP_SAE_DIR"
WIDTHS: dict[str, int] = {
    "2k": 2048,
    "4k": 4096,
    "16k": 16384,
    "24k": 24576,
    "32k": 32768,
    "65k": 65536,
    "128k": 131072,
    "131k": 131072,
    "262k": 262144,
    "524k": 524288,
    "1m": 1048576,
}
_LAYER = re.compile(r"^L(\d+)$")
_L0 = re.compile(r"^l0[_-](\d+(?:\.\d+)?)$")
_L0_NAME = re.compile(r"^l0[_-]([a-z][a-z0-9_]*)$")
_PATH_L0_NAME = re.compile(r"_l0_([a-z0-9_]+)$")


@dataclass(frozen=True)
class SaeSpec:
    """What an address resolves to. Pure data: nothing is read or downloaded."""

    address: str
    """Canonical address (defaults left out); the ``source`` of every FeatureId of this source."""
    kind: Literal["sae", "neurons"]
    model: str
    """The subject model as :func:`autointerp.subject.load_subject` takes it: a Hugging Face id
    (``google/gemma-2-9b``, ``openai-community/gpt2``) or an embedded name (``gemma3-270m``)."""
    hook: HookPoint
    model_name: str | None = None
    """Short model name the SAE release uses (``gemma-2-9b``, ``gpt2-small``); for neurons, ``model``."""
    family: str | None = None
    site: str | None = None
    format: str | None = None
    repo_id: str | None = None
    revision: str | None = None
    revision_pinned: bool = False
    path: str | None = None
    """Path of the SAE (file or folder) inside the repo or local root, as ``load_sae`` takes it."""
    files: tuple[str, ...] = ()
    """Every file to fetch, relative to the repo root."""
    local_root: str | None = None
    """For SAEs shipped with the project: the folder that holds ``files``."""
    d_in: int | None = None
    width: int | None = None
    width_label: str | None = None
    l0: float | None = None
    canonical: bool = True
    neuronpedia: str | None = None
    release: str | None = None
    """The release it belongs to (SAELens's release name), or the embedded SAE's description."""

    @property
    def layer(self) -> int:
        return self.hook.layer


@dataclass(frozen=True)
class _Site:
    family: str
    site: str
    model: str
    subject: str
    fmt: str
    hook_kind: str
    d_in: int
    default_width: str
    revision: str
    revision_pinned: bool
    repo_ids: dict[str, str]
    """width label -> repo id ("" key: one repo for all widths)."""
    path_template: str | None
    local_dir: str | None
    rows: tuple[tuple[int, str, float | None, str | None, bool, str | None], ...]
    release: str = ""
    l0_names: bool = False
    """L0s are named by the release (Gemma Scope 2: small, medium, big, ...) as the end of each row's path."""

    def repo_for(self, width: str) -> str | None:
        return self.repo_ids.get(width) or self.repo_ids.get("")


@cache
def _sites() -> tuple[_Site, ...]:
    text = resources.files("autointerp").joinpath("data/sae_registry.json").read_text()
    data = json.loads(text)
    out = []
    for s in data["sites"]:
        repos = dict(s.get("repo_ids") or {})
        if s.get("repo_id"):
            repos[""] = s["repo_id"]
        out.append(
            _Site(
                family=s["family"],
                site=s["site"],
                model=s["model"],
                subject=s.get("subject") or s["model"],
                fmt=s["format"],
                hook_kind=s["hook"],
                d_in=int(s["d_in"]),
                default_width=s["default_width"],
                revision=s.get("revision") or "main",
                revision_pinned=bool(s.get("revision_pinned")),
                repo_ids=repos,
                path_template=s.get("path_template"),
                local_dir=s.get("local_dir"),
                rows=tuple((int(r[0]), str(r[1]), r[2], r[3], bool(r[4]), r[5]) for r in s["saes"]),
                release=str(s.get("release") or ""),
                l0_names=bool(s.get("l0_names")),
            )
        )
    return tuple(out)


def families() -> dict[str, list[str]]:
    """Family name -> its site names (first is the default)."""
    fams: dict[str, list[str]] = {}
    for s in _sites():
        fams.setdefault(s.family, []).append(s.site)
    for sites in fams.values():
        sites.sort(key=lambda x: (x != "res", x))
    return fams


def _default_site(family: str) -> str:
    return families()[family][0]


def _spec(site: _Site, row: tuple[int, str, float | None, str | None, bool, str | None]) -> SaeSpec:
    layer, width, l0, np_id, canonical, path = row
    parts = [site.family, f"L{layer}"]
    if site.site != _default_site(site.family):
        parts.append(site.site)
    if width != site.default_width:
        parts.append(width)
    if not canonical and site.l0_names and path is not None:
        parts.append(f"l0_{_l0_name(path)}")
    elif not canonical and l0 is not None:
        parts.append(f"l0_{_fmt_l0(l0)}")
    if path is None:
        assert site.path_template is not None
        path = site.path_template.format(layer=layer, width=width, l0=_fmt_l0(l0) if l0 is not None else "")
    if site.fmt == "gemma_scope":
        files: tuple[str, ...] = (f"{path}/params.npz",)
        sae_path = files[0]
    elif site.fmt == "gemma_scope_2":
        files = (f"{path}/params.safetensors",)
        sae_path = path
    else:
        files = (f"{path}/cfg.json", f"{path}/sae_weights.safetensors")
        sae_path = path
    local_root = str(datasets_dir() / site.local_dir) if site.local_dir else None
    return SaeSpec(
        address="/".join(parts),
        kind="sae",
        model=site.subject,
        model_name=site.model,
        hook=HookPoint(layer, site.hook_kind),
        family=site.family,
        site=site.site,
        format=site.fmt,
        repo_id=site.repo_for(width),
        revision=None if local_root else site.revision,
        revision_pinned=site.revision_pinned,
        path=sae_path,
        files=files,
        local_root=local_root,
        d_in=site.d_in,
        width=WIDTHS.get(width),
        width_label=width,
        l0=None if l0 is None else float(l0),
        canonical=canonical,
        neuronpedia=np_id,
        release=site.release or None,
    )


def _l0_name(path: str) -> str:
    m = _PATH_L0_NAME.search(path)
    return m.group(1) if m else ""


def _fmt_l0(l0: float) -> str:
    return str(int(l0)) if float(l0).is_integer() else str(l0)


def iter_specs(canonical_only: bool = False) -> Iterator[SaeSpec]:
    """Every SAE of the registry (or only the canonical one per layer, site and width)."""
    for site in _sites():
        for row in site.rows:
            if row[4] or not canonical_only:
                yield _spec(site, row)


def known_addresses() -> list[str]:
    return [s.address for s in iter_specs()]


def _unknown(address: str, why: str) -> UserError:
    close = difflib.get_close_matches(address, known_addresses(), n=4, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return UserError(f"unknown source address {address!r}: {why}{hint} (list them with: autointerp sources)")


def resolve_address(address: str) -> SaeSpec:
    """Parse an address into a :class:`SaeSpec` (pure data). UserError with close matches when unknown."""
    text = address.strip().strip("/")
    parts = [p for p in text.split("/") if p]
    if parts and parts[0] == "embedded":
        parts = parts[1:]
    # neurons (or raw hook dims): <model>/L<n>/<hook kind>, the model may itself contain slashes
    if len(parts) >= 3 and parts[-1] in KINDS and _LAYER.match(parts[-2]):
        model = "/".join(parts[:-2])
        m = _LAYER.match(parts[-2])
        assert m
        hook = HookPoint(int(m.group(1)), parts[-1])
        return SaeSpec(
            address=f"{model}/{hook}", kind="neurons", model=model, hook=hook, model_name=model, canonical=True
        )
    fams = families()
    if len(parts) < 2 or parts[0] not in fams:
        why = f"no SAE family {parts[0]!r} (known: {', '.join(fams)})" if parts else "empty address"
        raise _unknown(text, why)
    family = parts[0]
    m = _LAYER.match(parts[1])
    if not m:
        raise _unknown(text, f"expected a layer like L20 after {family}/, got {parts[1]!r}")
    layer = int(m.group(1))
    site_name: str | None = None
    width: str | None = None
    l0: float | None = None
    l0_name: str | None = None
    for p in parts[2:]:
        lm = _L0.match(p.lower())
        nm = _L0_NAME.match(p.lower())
        if site_name is None and width is None and l0 is None and l0_name is None and p in fams[family]:
            site_name = p
        elif width is None and l0 is None and l0_name is None and p.lower() in WIDTHS:
            width = p.lower()
        elif l0 is None and l0_name is None and lm:
            l0 = float(lm.group(1))
        elif l0 is None and l0_name is None and nm:
            l0_name = nm.group(1)
        else:
            raise _unknown(
                text,
                f"cannot read {p!r} (sites of {family}: {', '.join(fams[family])}; widths like 16k; L0 like l0_68)",
            )
    site_name = site_name or _default_site(family)
    site = next(s for s in _sites() if s.family == family and s.site == site_name)
    rows = [r for r in site.rows if r[0] == layer]
    if not rows:
        layers = sorted({r[0] for r in site.rows})
        raise _unknown(text, f"{family} {site_name} has no SAE at layer {layer} (layers: {_ranges(layers)})")
    width = width or site.default_width
    wrows = [r for r in rows if r[1] == width]
    if not wrows:
        raise _unknown(
            text,
            f"no {width} SAE at {family}/L{layer} {site_name} (widths: {_widths(rows)})",
        )
    if l0_name is not None:
        chosen = [r for r in wrows if site.l0_names and r[5] is not None and _l0_name(r[5]) == l0_name]
        if not chosen:
            raise _unknown(text, f"no L0 named {l0_name!r} at {family}/L{layer}/{width} (L0s: {_l0s(wrows, site)})")
    elif l0 is None:
        chosen = [r for r in wrows if r[4]] or (wrows if len(wrows) == 1 else [])
        if not chosen:
            raise _unknown(
                text,
                f"pick an L0 for {family}/L{layer}/{width}: {_l0s(wrows, site)}",
            )
    else:
        chosen = [r for r in wrows if r[2] is not None and float(r[2]) == l0]
        if not chosen:
            raise _unknown(
                text,
                f"no L0 {_fmt_l0(l0)} at {family}/L{layer}/{width} (L0s: {_l0s(wrows, site, '')})",
            )
        if len(chosen) > 1:
            raise _unknown(
                text,
                f"L0 {_fmt_l0(l0)} names {len(chosen)} SAEs at {family}/L{layer}/{width}; pick one by name: "
                f"{_l0s(chosen, site)}",
            )
    return _spec(site, chosen[0])


_Row = tuple[int, str, float | None, str | None, bool, str | None]


def _widths(rows: list[_Row]) -> str:
    return ", ".join(sorted({r[1] for r in rows}, key=lambda w: WIDTHS.get(w, 0)))


def _l0s(rows: list[_Row], site: _Site, prefix: str = "l0_") -> str:
    """The L0s of ``rows``: ``l0_68, l0_114`` (``68, 114`` with ``prefix=""``), or where the release names
    them, ``l0_small (10), l0_big (60)``."""
    if site.l0_names:
        return ", ".join(f"l0_{_l0_name(r[5] or '')} ({_fmt_l0(r[2])})" for r in rows if r[2] is not None)
    return ", ".join(prefix + _fmt_l0(r[2]) for r in rows if r[2] is not None)


def _ranges(values: list[int]) -> str:
    out: list[str] = []
    for v in values:
        if out and "-" not in out[-1] and int(out[-1]) == v - 1:
            out[-1] = f"{out[-1]}-{v}"
        elif out and "-" in out[-1] and int(out[-1].split("-")[1]) == v - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{v}"
        else:
            out.append(str(v))
    return ",".join(out)


def site_summaries() -> list[dict[str, Any]]:
    """One row per (family, site): for ``autointerp sources``."""
    out = []
    for s in _sites():
        layers = sorted({r[0] for r in s.rows})
        widths = sorted({r[1] for r in s.rows}, key=lambda w: WIDTHS.get(w, 0))
        canon_l0 = sorted({float(r[2]) for r in s.rows if r[4] and r[2] is not None})
        addr = f"{s.family}/L<n>" + ("" if s.site == _default_site(s.family) else f"/{s.site}")
        out.append(
            {
                "address": addr,
                "model": s.subject,
                "site": s.site,
                "layers": _ranges(layers),
                "widths": widths,
                "default_width": s.default_width,
                "l0": (min(canon_l0), max(canon_l0)) if canon_l0 else None,
                "hook": s.hook_kind,
                "format": s.fmt,
                "local": s.local_dir is not None,
                "repo": s.repo_for(s.default_width),
                "release": s.release,
            }
        )
    return out


# ---- files ------------------------------------------------------------------------------------------
def local_roots(spec: SaeSpec, local_dir: Path | None = None) -> list[Path]:
    """Folders searched, in order, for the spec's files (each mirrors the repo layout)."""
    roots: list[Path] = []
    if spec.local_root:
        roots.append(Path(spec.local_root))
    if local_dir is not None:
        roots.append(Path(local_dir).expanduser())
    env = os.environ.get(SAE_DIR_ENV)
    if env:
        roots.append(Path(env).expanduser())
        if spec.repo_id:
            roots.append(Path(env).expanduser() / spec.repo_id)
    return roots


def find_local(spec: SaeSpec, local_dir: Path | None = None) -> Path | None:
    """The root under which all of the spec's files exist locally, or None."""
    for root in local_roots(spec, local_dir):
        if all((root / f).is_file() for f in spec.files):
            return root
    return None


def fetch_files(spec: SaeSpec, *, local_dir: Path | None = None, revision: str | None = None) -> Path:
    """A local root holding all of ``spec.files``: a local folder, or the hub cache (download when allowed)."""
    root = find_local(spec, local_dir)
    if root is not None:
        return root
    where = (Path(local_dir) if local_dir else Path(os.environ.get(SAE_DIR_ENV) or "<sae-dir>")).expanduser()
    if spec.local_root or not spec.repo_id:
        raise UserError(
            f"{spec.address}: {spec.files[0]} is missing from {spec.local_root}; reinstall autointerp "
            "or rebuild it with: autointerp train-sae"
        )
    rev = revision or spec.revision or "main"
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:  # pragma: no cover - a core dependency
        raise UserError("huggingface_hub is not installed: pip install huggingface_hub") from e
    got: list[Path] = []
    others = "; ".join(spec.files[1:]) + " beside " if len(spec.files) > 1 else ""
    for f in spec.files:
        try:
            got.append(Path(hf_hub_download(repo_id=spec.repo_id, filename=f, revision=rev)))
        except Exception as e:  # offline, missing, auth: all become one actionable line
            log.debug("hf_hub_download(%s, %s, %s) failed: %r", spec.repo_id, f, rev, e)
            raise UserError(
                f"{spec.address} needs {f} from hub repo {spec.repo_id} (revision {rev}) and it is not available "
                f"({type(e).__name__}): put {others}it at {where / f} and pass --sae-dir {where} "
                f"(or set {SAE_DIR_ENV}), or allow downloads (unset HF_HUB_OFFLINE, log in for gated repos)"
            ) from e
    # hf_hub_download returns <snapshot>/<filename>: the snapshot folder mirrors the repo
    first = got[0]
    return Path(str(first)[: -len(spec.files[0])]) if str(first).endswith(spec.files[0]) else first.parent


def resolve_source(
    address: str,
    *,
    local_dir: Path | None = None,
    revision: str | None = None,
    subject: Any | None = None,
    hook_dim: int | None = None,
) -> FeatureSource:
    """Resolve an address to a loaded :class:`FeatureSource` (SAE or neurons).

    ``subject`` (an :class:`autointerp.subject.Subject`) or ``hook_dim`` gives the width of the subject's
    activations at the source's hook: neuron sources need it, and SAEs are checked against it
    (:func:`autointerp.sources.formats.check_compatible`).

    SAE files come from ``local_dir`` (laid out like the repo, e.g.
    ``<local_dir>/layer_20/width_16k/average_l0_68/params.npz``), ``$AUTOINTERP_SAE_DIR`` (same layout,
    optionally under ``<repo_id>/``), the project's datasets (embedded SAE), or the Hugging Face hub at the
    pinned (or given) revision; offline, a missing file is a UserError naming repo, revision, file and place."""
    spec = resolve_address(address)
    model_label = spec.model
    if subject is not None:
        hook_dim = int(subject.hook_dim(spec.hook))
        model_label = str(getattr(subject, "name", spec.model))
    if spec.kind == "neurons":
        if hook_dim is None:
            raise UserError(f"{spec.address}: a neuron source needs the subject model to size it (pass subject=)")
        return _neuron_source(spec, hook_dim)
    from autointerp.sources.formats import check_compatible, load_sae

    root = fetch_files(spec, local_dir=local_dir, revision=revision)
    assert spec.path is not None
    sae = load_sae(
        root / spec.path, format=spec.format, hook=spec.hook, address=spec.address, model_name=spec.model_name
    )
    if (spec.d_in is not None and sae.d_in != spec.d_in) or (spec.width is not None and sae.n_features != spec.width):
        raise UserError(
            f"{root / spec.path} has d_in {sae.d_in} and {sae.n_features} features but {spec.address} should have "
            f"d_in {spec.d_in} and {spec.width}: the file is not this SAE; replace it"
        )
    sae.info.update({"repo_id": spec.repo_id, "revision": revision or spec.revision, "neuronpedia": spec.neuronpedia})
    if hook_dim is not None:
        check_compatible(sae, hook_dim, model_label)
    if subject is not None and model_label not in (spec.model, spec.model_name):
        log.warning(
            "%s was trained on %s but the subject is %s: the widths match, the features may not mean anything",
            spec.address,
            spec.model,
            model_label,
        )
    return sae


def _neuron_source(spec: SaeSpec, hook_dim: int) -> FeatureSource:
    from autointerp.sources.neurons import neuron_source

    return neuron_source(spec.model, spec.hook, hook_dim)
