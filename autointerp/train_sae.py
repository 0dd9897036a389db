"""Train a small SAE on a subject model and save it in Gemma Scope ``params.npz`` form.

Method (what ``autointerp train-sae`` and the embedded SAE in ``datasets/embedded-sae/`` use):

1. Run the subject over corpus windows and collect activations at one hook (BOS/pad positions dropped).
2. Scale them by one scalar ``s`` so that the mean squared norm is ``d_in`` (Gemma's residual stream is
   large), and train a **TopK SAE** (Gao et al. 2024): ``f = topk(relu((x/s - b_dec) W_enc + b_enc))``,
   ``x̂/s = f W_dec + b_dec``; MSE loss, Adam, unit-norm decoder rows (renormalised after each step, with
   the gradient component along the rows removed), encoder initialised as the decoder's transpose,
   ``b_dec`` at the data mean, plus the AuxK loss (top-``aux_k`` dead latents reconstruct the residual) to
   revive dead latents.
3. Convert to **JumpReLU**, the Gemma Scope encoder: fold ``s`` and ``b_dec`` into ``W_enc``/``b_enc``
   (``pre = x W_enc' + b_enc'`` with ``W_enc' = W_enc/s``, ``b_enc' = b_enc - b_dec W_enc``) and pick each
   latent's threshold so that it fires on held-out tokens as often as it did under TopK (the
   ``1 - freq`` quantile of its pre-activation); never-firing latents get a threshold above their
   maximum. The thresholds change which latents fire, so the decoder is then refitted by (ridge) least
   squares on the JumpReLU codes of training tokens (``W_dec``, ``b_dec``; rows no longer unit-norm).
4. Save ``W_enc``/``W_dec`` as float16 (the loader upcasts), the rest float32, with an
   ``autointerp_sae.json`` sidecar (hook, model, metrics), and measure the saved file through the
   Gemma Scope loader on held-out tokens: fraction of variance explained, L0, dead fraction.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autointerp.config import config_to_dict
from autointerp.errors import UserError
from autointerp.hooks import HookPoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSaeConfig:
    model: str = "gemma3-270m"
    """Subject model: an embedded name (gemma3-270m, smollm2-135m), a local folder or a hub id."""
    hook: str = "L6/resid_post"
    """Hook point to train on, e.g. L6/resid_post or L6/mlp_out."""
    n_features: int = 2048
    """Number of SAE latents."""
    k: int = 32
    """Active latents per token during TopK training."""
    aux_k: int = 256
    """Dead latents used by the AuxK loss (0 turns it off)."""
    aux_coef: float = 1 / 32
    """Weight of the AuxK loss."""
    dead_after: int = 100_000
    """A latent counts as dead for AuxK after this many training tokens without firing."""
    tokens: int = 120_000
    """Corpus tokens to collect activations from (BOS/pad excluded); 10% are held out (thresholds, evaluation)."""
    window: int = 64
    """Tokens per corpus window."""
    corpus: str = "wiki"
    """Corpus spec for autointerp.corpus.load_corpus (the embedded Wikipedia summaries by default)."""
    epochs: int = 4
    """Passes over the collected activations."""
    refit_tokens: int = 60_000
    """Training tokens used to refit the decoder by least squares after the JumpReLU conversion."""
    batch_size: int = 1024
    """Tokens per optimisation step."""
    lr: float = 2e-3
    """Adam learning rate (cosine-decayed to 10% over training)."""
    seed: int = 0
    """Seed of initialisation and shuffling."""
    threads: int = 2
    """CPU threads for torch."""
    device: str = "cpu"
    """Device for the subject and the training (cpu, cuda)."""
    out: str = ""
    """Folder to write params.npz and autointerp_sae.json into."""


@dataclass
class TopKSae:
    """Trained TopK SAE in the normalised space (x / scale)."""

    W_enc: torch.Tensor  # [d, F]
    b_enc: torch.Tensor  # [F]
    W_dec: torch.Tensor  # [F, d]
    b_dec: torch.Tensor  # [d]
    k: int
    scale: float

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Dense TopK activations of raw inputs ``x``."""
        pre = torch.relu((x / self.scale - self.b_dec) @ self.W_enc + self.b_enc)
        v, i = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, i, v)


def train_topk(
    acts: torch.Tensor,
    *,
    n_features: int,
    k: int,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    aux_k: int = 256,
    aux_coef: float = 1 / 32,
    dead_after: int = 100_000,
) -> tuple[TopKSae, dict[str, Any]]:
    """Train a TopK SAE on raw activations ``acts: [N, d]`` (on their device). Returns it and a log."""
    if acts.ndim != 2 or acts.shape[0] < batch_size:
        raise UserError(f"need at least batch_size={batch_size} activation rows to train, got {tuple(acts.shape)}")
    if not (0 < k < n_features):
        raise UserError(f"k={k} must be between 1 and n_features-1 ({n_features - 1})")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    n, d = acts.shape
    dev = acts.device
    scale = float(acts.float().pow(2).sum(-1).mean().sqrt() / math.sqrt(d))
    if not math.isfinite(scale) or scale <= 0:
        raise UserError("activations are all zero or non-finite: cannot train an SAE on them")
    w_dec = torch.randn(n_features, d, generator=gen).to(dev)
    w_dec /= w_dec.norm(dim=-1, keepdim=True)
    W_dec = torch.nn.Parameter(w_dec)
    W_enc = torch.nn.Parameter(w_dec.T.clone().contiguous())
    b_enc = torch.nn.Parameter(torch.zeros(n_features, device=dev))
    b_dec = torch.nn.Parameter((acts.float().mean(0) / scale).to(dev))
    params = [W_enc, b_enc, W_dec, b_dec]
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=6.25e-10)
    steps_per_epoch = n // batch_size
    total = steps_per_epoch * epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    since_fired = torch.zeros(n_features, dtype=torch.long, device=dev)
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    step = 0
    for _epoch in range(epochs):
        perm = torch.randperm(n, generator=gen).to(dev)
        for b in range(steps_per_epoch):
            x = acts[perm[b * batch_size : (b + 1) * batch_size]].float() / scale
            pre = torch.relu((x - b_dec) @ W_enc + b_enc)
            v, i = pre.topk(k, dim=-1)
            f = torch.zeros_like(pre).scatter(-1, i, v)
            recon = f @ W_dec + b_dec
            err = x - recon
            var = (x - x.mean(0)).pow(2).sum()
            loss = err.pow(2).sum() / var  # fraction of variance unexplained
            with torch.no_grad():
                fired = torch.zeros(n_features, dtype=torch.bool, device=dev)
                fired[i[v > 0]] = True
                since_fired += batch_size
                since_fired[fired] = 0
                dead = since_fired > dead_after
            aux = torch.zeros((), device=dev)
            n_dead = int(dead.sum())
            if aux_k and n_dead:
                kk = min(aux_k, n_dead)
                pre_dead = pre.masked_fill(~dead, 0.0)
                av, ai = pre_dead.topk(kk, dim=-1)
                aux_recon = torch.zeros_like(pre).scatter(-1, ai, av) @ W_dec
                aux = (err.detach() - aux_recon).pow(2).sum() / var
                aux = torch.nan_to_num(aux, nan=0.0)
            (loss + aux_coef * aux).backward()
            with torch.no_grad():  # keep decoder rows unit-norm: drop the parallel gradient component
                assert W_dec.grad is not None
                W_dec.grad -= (W_dec.grad * W_dec).sum(-1, keepdim=True) * W_dec
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            with torch.no_grad():
                W_dec.div_(W_dec.norm(dim=-1, keepdim=True))
            step += 1
            if step % 50 == 0 or step == total:
                fvu = float(loss.detach())
                history.append({"step": step, "fvu": fvu, "aux": float(aux.detach()), "dead": n_dead / n_features})
                log.info(
                    "step %d/%d  fvu %.4f  dead %.3f  %.1fs",
                    step,
                    total,
                    fvu,
                    n_dead / n_features,
                    time.perf_counter() - t0,
                )
    sae = TopKSae(W_enc.detach(), b_enc.detach(), W_dec.detach(), b_dec.detach(), k, scale)
    return sae, {"steps": step, "seconds": time.perf_counter() - t0, "history": history}


def to_jumprelu(sae: TopKSae, calib: torch.Tensor) -> dict[str, np.ndarray]:
    """Gemma Scope arrays for ``sae``: folds scale and b_dec, sets per-latent thresholds on ``calib`` [M, d]."""
    s = sae.scale
    W_enc = sae.W_enc / s
    b_enc = sae.b_enc - sae.b_dec @ sae.W_enc
    with torch.no_grad():
        pre = calib.float() @ W_enc + b_enc  # [M, F], equal to the TopK pre-activations
        f = sae.encode(calib.float())
        freq = (f > 0).float().mean(0)  # TopK firing rate per latent
        m = pre.shape[0]
        # threshold = the (1 - freq) quantile of the latent's pre-activation: fires as often as under TopK
        n_fire = (freq * m).round().long().clamp(min=0, max=m - 1)
        sorted_pre = pre.sort(dim=0, descending=True).values
        idx = (n_fire).clamp(max=m - 1)
        thr = sorted_pre.gather(0, idx.unsqueeze(0)).squeeze(0)
        never = n_fire == 0
        thr = torch.where(never, sorted_pre[0] + 1.0, thr).clamp(min=0.0)
    return {
        "W_enc": W_enc.cpu().numpy().astype(np.float16),
        "W_dec": (sae.W_dec * s).cpu().numpy().astype(np.float16),
        "b_enc": b_enc.cpu().numpy().astype(np.float32),
        "b_dec": (sae.b_dec * s).cpu().numpy().astype(np.float32),
        "threshold": thr.cpu().numpy().astype(np.float32),
    }


def refit_decoder(arrays: dict[str, np.ndarray], x: torch.Tensor, ridge: float = 1e-3) -> dict[str, np.ndarray]:
    """Least-squares decoder (``W_dec``, ``b_dec``) for the JumpReLU codes of ``x`` [M, d] (ridge-regularised):
    the thresholds change which latents fire, so the TopK decoder is no longer the best one for them."""
    W_enc = torch.from_numpy(arrays["W_enc"].astype(np.float32))
    pre = x.float() @ W_enc + torch.from_numpy(arrays["b_enc"])
    f = torch.relu(pre) * (pre > torch.from_numpy(arrays["threshold"]))
    a = torch.cat([f, torch.ones(f.shape[0], 1)], 1)
    gram = (a.T @ a).double() + ridge * a.shape[0] * torch.eye(a.shape[1], dtype=torch.float64)
    sol = torch.linalg.solve(gram, (a.T @ x.float()).double()).float()
    return {**arrays, "W_dec": sol[:-1].numpy().astype(np.float16), "b_dec": sol[-1].numpy().astype(np.float32)}


def save_gemma_scope(arrays: dict[str, np.ndarray], out: Path, meta: dict[str, Any]) -> Path:
    """Write ``params.npz`` (uncompressed, memory-mappable) and the ``autointerp_sae.json`` sidecar."""
    from autointerp.sources.formats import SIDECAR

    out.mkdir(parents=True, exist_ok=True)
    path = out / "params.npz"
    tmp = out / "params.tmp.npz"
    np.savez(tmp, **arrays)  # type: ignore[arg-type]
    tmp.replace(path)
    (out / SIDECAR).write_text(json.dumps(meta, indent=1) + "\n")
    return path


def evaluate(source: Any, x: torch.Tensor, batch: int = 4096) -> dict[str, float]:
    """FVE, L0 and dead fraction of a loaded SAE (``LinearSae``) on raw activations ``x: [M, d]``."""
    from autointerp.sources.sae import densify

    W_dec = source.decoder().float()
    b_dec = source.tensor("b_dec").float()
    sse, l0_sum = 0.0, 0.0
    fired = torch.zeros(source.n_features, dtype=torch.bool)
    for s in range(0, x.shape[0], batch):
        xb = x[s : s + batch].float()
        f = densify(source.encode(xb)).float()
        sse += float((xb - (f @ W_dec + b_dec)).pow(2).sum())
        l0_sum += float((f > 0).sum())
        fired |= (f > 0).any(0).cpu()
    var = float((x.float() - x.float().mean(0)).pow(2).sum())
    return {"fve": 1.0 - sse / var, "l0": l0_sum / x.shape[0], "dead_fraction": float((~fired).float().mean())}


def collect_activations(cfg: TrainSaeConfig) -> torch.Tensor:
    """Run the subject over corpus windows; activations at ``cfg.hook`` at document tokens (no BOS, no
    padding): [N, d] float32 on CPU, N = ``cfg.tokens``. Kept in ``<cache>/sae-acts/`` for reruns."""
    from autointerp.paths import cache_dir
    from autointerp.rundir import short_hash

    key = short_hash(json.dumps([cfg.model, cfg.hook, cfg.corpus, cfg.window, cfg.tokens, cfg.seed]))
    cached = cache_dir() / "sae-acts" / f"{key}.pt"
    if cached.is_file():
        log.info("reusing cached activations %s", cached)
        x: torch.Tensor = torch.load(cached, weights_only=True)
        return x
    x = _collect(cfg)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    torch.save(x, tmp)
    tmp.replace(cached)
    return x


def _collect(cfg: TrainSaeConfig) -> torch.Tensor:
    from autointerp.corpus import load_corpus
    from autointerp.subject import load_subject

    hook = HookPoint.parse(cfg.hook)
    subject = load_subject(cfg.model, device=cfg.device, dtype="float32", threads=cfg.threads)
    subject.check_hook(hook)
    windows = load_corpus(cfg.corpus, subject.tokenizer, window=cfg.window, seed=cfg.seed)
    x = torch.empty((cfg.tokens, subject.hook_dim(hook)), dtype=torch.float32)
    got = 0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for batch in windows.batches(32):
            acts = subject.run(batch.input_ids.to(subject.device), [hook])[hook]
            rows = acts[batch.valid_mask().to(acts.device)].float().cpu()
            take = min(rows.shape[0], cfg.tokens - got)
            x[got : got + take] = rows[:take]
            got += take
            if got >= cfg.tokens:
                break
            if got // 20_000 != (got - take) // 20_000:
                log.info("collected %d / %d tokens (%.0fs)", got, cfg.tokens, time.perf_counter() - t0)
    if got < cfg.tokens:
        raise UserError(f"corpus {cfg.corpus!r} gave only {got} tokens, fewer than --tokens {cfg.tokens}; lower it")
    log.info("collected %d activations of width %d at %s in %.0fs", got, x.shape[1], hook, time.perf_counter() - t0)
    return x


def train_and_save(cfg: TrainSaeConfig) -> dict[str, Any]:
    """Collect activations, train, convert, save, reload through the Gemma Scope loader and evaluate."""
    if not cfg.out:
        raise UserError("pass --out DIR: the folder to write the SAE into")
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    x = collect_activations(cfg).to(cfg.device)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    perm = torch.randperm(x.shape[0], generator=gen).to(x.device)
    n_hold = max(x.shape[0] // 10, min(1000, x.shape[0] // 2))
    held, train = x[perm[:n_hold]], x[perm[n_hold:]]
    sae, info = train_topk(
        train,
        n_features=cfg.n_features,
        k=cfg.k,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        seed=cfg.seed,
        aux_k=cfg.aux_k,
        aux_coef=cfg.aux_coef,
        dead_after=cfg.dead_after,
    )
    calib, evalx = held[: n_hold // 2], held[n_hold // 2 :]
    arrays = refit_decoder(to_jumprelu(sae, calib), train[: cfg.refit_tokens].cpu())
    out = Path(cfg.out).expanduser()
    topk_metrics = _topk_metrics(sae, evalx)
    meta: dict[str, Any] = {
        "hook": cfg.hook,
        "model": cfg.model,
        "trained_by": "autointerp train-sae",
        "config": config_to_dict(cfg),
        "train_tokens": int(train.shape[0]),
        "heldout_tokens": int(evalx.shape[0]),
        "steps": info["steps"],
        "train_seconds": round(info["seconds"], 1),
        "scale": sae.scale,
        "topk_heldout": topk_metrics,
    }
    save_gemma_scope(arrays, out, meta)
    from autointerp.sources.formats import load_sae

    src = load_sae(out / "params.npz", format="gemma_scope")
    metrics = evaluate(src, evalx.cpu())
    meta["jumprelu_heldout"] = metrics
    save_gemma_scope(arrays, out, meta)
    return {
        "train_tokens": int(train.shape[0]),
        "steps": info["steps"],
        "seconds": info["seconds"],
        "topk_fve": topk_metrics["fve"],
        "fve": metrics["fve"],
        "l0": metrics["l0"],
        "dead_fraction": metrics["dead_fraction"],
    }


def _topk_metrics(sae: TopKSae, x: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        f = sae.encode(x.float())
        recon = (f @ sae.W_dec + sae.b_dec) * sae.scale
        var = float((x.float() - x.float().mean(0)).pow(2).sum())
        return {
            "fve": 1.0 - float((x.float() - recon).pow(2).sum()) / var,
            "l0": float((f > 0).sum(-1).float().mean()),
            "dead_fraction": float((~(f > 0).any(0)).float().mean()),
        }
