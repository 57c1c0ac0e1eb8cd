"""M-ADDA's two training stages and the whole run (config in, results out).

Stage 1 (Algorithm 1) trains the source model with the triplet loss on triplets from
:func:`madda_rs.triplets`. Stage 2 (Algorithm 2) starts the target model from the source model
and alternates adversarial steps against a discriminator (Eq. 3) with center-magnet steps
(Eq. 4). Prediction (Algorithm 3) is :func:`madda_rs.knn_predict` over the source model's
embeddings of every source training image.

Functions here neither parse arguments nor print: progress goes through the optional
``progress`` factory (for example ``tqdm.tqdm``), results come back as values.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Protocol

import numpy as np
import torch

import madda_rs

from .config import TrainConfig
from .data import ADDA_SUBSET, Domain, load_domain
from .losses import center_magnet_loss, confusion_loss, discriminator_loss, pairwise_sq_dists, triplet_loss
from .models import Discriminator, EmbeddingNet

log = logging.getLogger("madda_rs")


class Bar(Protocol):
    def update(self, n: int = 1) -> Any: ...
    def set_postfix(self, ordered_dict: Optional[Dict[str, Any]] = None, refresh: bool = True, **kwargs: Any) -> Any: ...
    def close(self) -> Any: ...


ProgressFactory = Callable[..., Bar]  # called as factory(total=..., desc=...)


class _NoBar:
    def update(self, n: int = 1) -> None: ...
    def set_postfix(self, ordered_dict: Optional[Dict[str, Any]] = None, refresh: bool = True, **kwargs: Any) -> None: ...
    def close(self) -> None: ...


def _no_progress(**_: Any) -> Bar:
    return _NoBar()


@dataclass
class Splits:
    """The four tensor sets of a run, on the training device."""

    src_train: Domain
    src_test: Domain
    tgt_train: Domain
    tgt_test: Domain


@dataclass
class RunResult:
    """What a run produced. `target_accuracy` is the final epoch's, never a best-epoch pick."""

    config: TrainConfig
    target_accuracy: float
    source_accuracy: float  # kNN on the source test split with the source model
    source_only_accuracy: float  # kNN on the target test split with the source model (no adaptation)
    wall_seconds: float
    device: str
    seconds_per_source_epoch: Optional[float]
    seconds_per_target_epoch: Optional[float]
    history: Dict[str, List[Dict[str, Any]]] = field(default_factory=dict)
    out_dir: Optional[str] = None

    def metrics(self) -> Dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "config"}


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present, else CPU; 'cuda' without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but torch sees no CUDA device; use --device cpu or auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) from one number."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_splits(config: TrainConfig, device: torch.device) -> Splits:
    """Train splits are subsets under the ADDA protocol (seeded); test splits are always whole."""

    def load(name: str, train: bool) -> Domain:
        subset = ADDA_SUBSET[name] if (train and config.protocol == "adda") else None
        return load_domain(
            name,
            train,
            config.data_dir,
            download=config.download,
            usps_resize=config.usps_resize,
            subset=subset,
            seed=config.seed,
            device=device,
        )

    return Splits(load(config.src, True), load(config.src, False), load(config.tgt, True), load(config.tgt, False))


@torch.no_grad()
def embed(model: EmbeddingNet, images: torch.Tensor, batch_size: int = 2048) -> np.ndarray:
    """(N, D) float32 embeddings in eval mode."""
    model.eval()
    out = torch.cat([model(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
    model.train()
    return out.float().cpu().numpy()


def knn_accuracy(
    src_emb: np.ndarray, src_y: np.ndarray, model: EmbeddingNet, test: Domain, k: int, threads: Optional[int]
) -> float:
    """Algorithm 3: label each test image by its k nearest source embeddings; return accuracy."""
    pred = madda_rs.knn_predict(src_emb, src_y, embed(model, test.images), k, threads=threads)
    return float((pred == test.labels.cpu().numpy()).mean())


def _batches(n: int, batch_size: int, gen: torch.Generator, device: torch.device) -> List[torch.Tensor]:
    """A shuffled epoch of index batches; the last partial batch is dropped unless it is the only one."""
    perm = torch.randperm(n, generator=gen)
    cut = max(n // batch_size, 1) * batch_size
    return list(perm[: min(cut, n)].to(device).split(batch_size))


def _zero_grad(optimizer: torch.optim.Optimizer, config: TrainConfig) -> None:
    # set_to_none=False reproduces PyTorch 0.4, where Adam kept moving zero-grad params by momentum.
    optimizer.zero_grad(set_to_none=not config.zero_grad_momentum)


def _adam(params: Any, config: TrainConfig, lr: Optional[float] = None) -> torch.optim.Adam:
    # fused: one kernel per step instead of ~10 per parameter; Adam was 13% of CPU time unfused
    return torch.optim.Adam(params, lr=lr or config.lr, betas=tuple(config.betas), fused=True)


def _mean(values: List[torch.Tensor]) -> float:
    """Mean of per-step scalars, read back once per epoch (a .item() per step syncs a GPU)."""
    return float(torch.stack(values).mean()) if values else 0.0


def train_source(
    config: TrainConfig, src: Domain, device: torch.device, progress: ProgressFactory = _no_progress
) -> tuple[EmbeddingNet, List[Dict[str, Any]]]:
    """Stage 1 (Algorithm 1): triplet-loss training of the source model."""
    model = EmbeddingNet(config.embedding_dim).to(device)
    opt = _adam(model.parameters(), config)
    gen = torch.Generator().manual_seed(config.seed + 1)
    rng = np.random.default_rng(config.seed + 2)
    labels_np = src.labels.cpu().numpy()
    history: List[Dict[str, Any]] = []
    bar = progress(total=config.epochs_source, desc="source")
    for epoch in range(config.epochs_source):
        start = time.perf_counter()
        losses: List[torch.Tensor] = []
        active: List[torch.Tensor] = []
        # Indices stay on the CPU for the labels (triplets are enumerated there); only the
        # device copy goes to the model, so a GPU run never syncs to read labels back.
        for idx_cpu in _batches(len(src), config.batch_size, gen, torch.device("cpu")):
            emb = model(src.images[idx_cpu.to(device)])
            y = labels_np[idx_cpu.numpy()]
            sq = None
            if config.negatives != "random":
                with torch.no_grad():
                    sq = pairwise_sq_dists(emb, emb).double().cpu().numpy()
            trip = madda_rs.triplets(
                y, seed=int(rng.integers(2**63)), negatives=config.negatives, sq_dists=sq, margin=config.margin,
                threads=config.threads,
            )
            if len(trip) == 0:
                continue
            loss, n_active = triplet_loss(emb, torch.from_numpy(trip).to(device), config.margin)
            _zero_grad(opt, config)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
            active.append(n_active.float())
        record = {
            "epoch": epoch,
            "loss": _mean(losses),
            "active_triplets": _mean(active),
            "seconds": time.perf_counter() - start,
        }
        history.append(record)
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.4f}", active=f"{record['active_triplets']:.0f}")
    bar.close()
    return model, history


def class_means(emb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-class mean embeddings (paper, Algorithm 2 line 8), rows in ascending label order."""
    classes = np.unique(labels)
    return np.stack([emb[labels == c].mean(axis=0) for c in classes]).astype(np.float32)


def kmeans_centers(emb: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    """KMeans centroids of the source embeddings (the official code's centers; labels unused)."""
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=n_clusters, n_init="auto", random_state=seed % 2**32).fit(emb)
    return km.cluster_centers_.astype(np.float32)


def train_target(
    config: TrainConfig,
    source_model: EmbeddingNet,
    splits: Splits,
    src_emb: np.ndarray,
    device: torch.device,
    progress: ProgressFactory = _no_progress,
) -> tuple[EmbeddingNet, List[Dict[str, Any]]]:
    """Stage 2 (Algorithm 2): adversarial adaptation plus the center magnet.

    `src_emb` holds the source model's embeddings of the source training images: the source
    model is frozen here, so they are computed once, not every epoch."""
    src, tgt = splits.src_train, splits.tgt_train
    src_y = src.labels.cpu().numpy()
    source_model.eval()
    for p in source_model.parameters():
        p.requires_grad_(False)
    target = copy.deepcopy(source_model).train()
    for p in target.parameters():
        p.requires_grad_(True)
    disc = Discriminator().to(device)
    opt_t = _adam(target.parameters(), config)
    opt_d = _adam(disc.parameters(), config, config.lr_discriminator)
    gen = torch.Generator().manual_seed(config.seed + 3)
    n_classes = len(np.unique(src_y))
    fixed_centers = class_means(src_emb, src_y) if config.centers == "class_means" else None

    history: List[Dict[str, Any]] = []
    last_accuracy: Optional[float] = None
    bar = progress(total=config.epochs_target, desc="target")
    for epoch in range(config.epochs_target):
        start = time.perf_counter()
        rec: Dict[str, Any] = {"epoch": epoch}
        if config.adversarial:
            d_losses: List[torch.Tensor] = []
            g_losses: List[torch.Tensor] = []
            d_correct: List[torch.Tensor] = []
            for _ in range(config.adversarial_passes):
                pairs = zip(
                    _batches(len(src), config.batch_size, gen, device),
                    _batches(len(tgt), config.target_batch_size, gen, device),
                )
                for si, ti in pairs:
                    with torch.no_grad():
                        f_src = source_model.encoder(src.images[si])
                    f_tgt = target.encoder(tgt.images[ti])
                    s_logit, t_logit = disc(f_src), disc(f_tgt.detach())
                    d_loss = discriminator_loss(s_logit, t_logit)
                    _zero_grad(opt_d, config)
                    d_loss.backward()
                    opt_d.step()
                    g_loss = confusion_loss(disc(f_tgt))
                    _zero_grad(opt_t, config)
                    _zero_grad(opt_d, config)
                    g_loss.backward()
                    opt_t.step()
                    d_losses.append(d_loss.detach())
                    g_losses.append(g_loss.detach())
                    d_correct.append(torch.cat([s_logit > 0, t_logit < 0]).float().mean())
            # d_acc near 1 means D wins outright (adaptation stalls); near 0.5, D is fooled
            rec.update(d_loss=_mean(d_losses), g_loss=_mean(g_losses), d_acc=_mean(d_correct))
        if config.magnet:
            if fixed_centers is not None:
                centers_np = fixed_centers
            else:
                centers_np = kmeans_centers(src_emb, n_classes, config.seed * 100_003 + epoch)
            centers = torch.from_numpy(centers_np).to(device)
            m_losses: List[torch.Tensor] = []
            for ti in _batches(len(tgt), config.target_batch_size, gen, device):
                x = tgt.images[ti]
                emb = target(x) if config.magnet_scope == "model" else target.embed_detached_conv(x)
                loss = center_magnet_loss(emb, centers)
                _zero_grad(opt_t, config)
                loss.backward()
                opt_t.step()
                m_losses.append(loss.detach())
            rec["magnet_loss"] = _mean(m_losses)
        rec["seconds"] = time.perf_counter() - start
        if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs_target:
            rec["target_accuracy"] = knn_accuracy(src_emb, src_y, target, splits.tgt_test, config.k, config.threads)
        history.append(rec)
        bar.update(1)
        if "target_accuracy" in rec:
            last_accuracy = rec["target_accuracy"]
        shown = {k: f"{rec[k]:.3f}" for k in ("d_loss", "d_acc", "magnet_loss") if k in rec}
        bar.set_postfix(shown, target_acc="-" if last_accuracy is None else f"{last_accuracy:.4f}")
    bar.close()
    return target, history


def train(config: TrainConfig, out_dir: Optional[str] = None, progress: Optional[ProgressFactory] = None) -> RunResult:
    """Run M-ADDA end to end: data, stage 1, stage 2 (unless `source_only`), kNN evaluation.

    With `out_dir`, writes config.json, metrics.json, source.pt and target.pt there."""
    progress = progress or _no_progress
    wall = time.perf_counter()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    device = resolve_device(config.device)
    splits = load_splits(config, device)  # first: a data error must not leave an empty run folder
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        config.save(str(out / "config.json"))
    log.info(
        "data: %s train %d, %s train %d, %s test %d",
        config.src, len(splits.src_train), config.tgt, len(splits.tgt_train), config.tgt, len(splits.tgt_test),
    )

    source_model, src_hist = train_source(config, splits.src_train, device, progress)
    if out is not None:
        save_checkpoint(out / "source.pt", source_model, config, config.epochs_source)
    src_emb = embed(source_model, splits.src_train.images)
    src_y = splits.src_train.labels.cpu().numpy()
    source_acc = knn_accuracy(src_emb, src_y, source_model, splits.src_test, config.k, config.threads)
    source_only_acc = knn_accuracy(src_emb, src_y, source_model, splits.tgt_test, config.k, config.threads)

    tgt_hist: List[Dict[str, Any]] = []
    if config.source_only:
        target_model, target_acc = source_model, source_only_acc
    else:
        target_model, tgt_hist = train_target(config, source_model, splits, src_emb, device, progress)
        target_acc = tgt_hist[-1]["target_accuracy"] if tgt_hist else source_only_acc
    if out is not None:
        save_checkpoint(out / "target.pt", target_model, config, config.epochs_target)

    result = RunResult(
        config=config,
        target_accuracy=float(target_acc),
        source_accuracy=source_acc,
        source_only_accuracy=source_only_acc,
        wall_seconds=time.perf_counter() - wall,
        device=str(device),
        seconds_per_source_epoch=_mean_seconds(src_hist),
        seconds_per_target_epoch=_mean_seconds(tgt_hist),
        history={"source": src_hist, "target": tgt_hist},
        out_dir=str(out) if out is not None else None,
    )
    if out is not None:
        with open(out / "metrics.json", "w") as f:
            json.dump(result.metrics(), f, indent=2)
    return result


def _mean_seconds(hist: List[Dict[str, Any]]) -> Optional[float]:
    return float(np.mean([h["seconds"] for h in hist])) if hist else None


def save_checkpoint(path: Path, model: EmbeddingNet, config: TrainConfig, epoch: int) -> None:
    torch.save({"state_dict": model.state_dict(), "config": config.to_dict(), "epoch": epoch}, path)


def load_model(path: Path, device: torch.device | str = "cpu") -> EmbeddingNet:
    """Rebuild an EmbeddingNet from a checkpoint written by :func:`train` (any device to any)."""
    ckpt = torch.load(path, map_location=device, weights_only=True)
    model = EmbeddingNet(int(ckpt["config"].get("embedding_dim", 256)))
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device)


def evaluate_run(
    run_dir: str, device: str = "auto", data_dir: Optional[str] = None, k: Optional[int] = None
) -> Dict[str, float]:
    """Re-score a saved run: reload its config and checkpoints, rebuild its data, run kNN
    (with the run's k unless `k` is given)."""
    run = Path(run_dir)
    for name in ("config.json", "source.pt", "target.pt"):
        if not (run / name).is_file():
            raise FileNotFoundError(f"{run / name} is missing: is {run} a folder written by 'madda-rs train --out'?")
    with open(run / "config.json") as f:
        values = json.load(f)
    if data_dir is not None:
        values["data_dir"] = data_dir
    if k is not None:
        values["k"] = k
    config = TrainConfig.from_dict(values)
    dev = resolve_device(device)
    splits = load_splits(config, dev)
    source_model, target_model = load_model(run / "source.pt", dev), load_model(run / "target.pt", dev)
    src_emb = embed(source_model, splits.src_train.images)
    src_y = splits.src_train.labels.cpu().numpy()
    return {
        "target_accuracy": knn_accuracy(src_emb, src_y, target_model, splits.tgt_test, config.k, config.threads),
        "source_accuracy": knn_accuracy(src_emb, src_y, source_model, splits.src_test, config.k, config.threads),
    }
