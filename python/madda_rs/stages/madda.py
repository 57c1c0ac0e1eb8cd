"""Stage 2 of M-ADDA (Algorithm 2): the target model, initialised from the source model, trained
adversarially against a discriminator on encoder features (Eq. 3) and pulled by the center
magnet toward the nearest source class centre (Eq. 4)."""

from __future__ import annotations

import copy
from typing import Any, Dict, List

import numpy as np
import torch

from ..config import TrainConfig
from ..domains import RunData
from ..evaluation import SourceReference, class_means
from ..losses import center_magnet_loss, confusion_loss, discriminator_loss
from ..models import Discriminator, EmbeddingNet
from ..runtime import Parallel, seeded_init, stream_seed
from . import adam, epoch_batches, mean, zero_grad


def kmeans_centers(emb: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    """KMeans centroids of the source embeddings (the official code's centres; labels unused)."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    # one OpenMP thread: scikit-learn's parallel Lloyd step sums its chunks in finishing order,
    # so the centres (and the whole run) would change from run to run; 2,000 x 256 is fast anyway
    with threadpool_limits(limits=1, user_api="openmp"):
        km = KMeans(n_clusters=n_clusters, n_init="auto", random_state=seed % 2**32).fit(emb)
    return km.cluster_centers_.astype(np.float32)


class MaddaTargetStage:
    name = "target"

    def __init__(
        self, config: TrainConfig, source_model: EmbeddingNet, reference: SourceReference, data: RunData,
        device: torch.device, parallel: Parallel = Parallel(),
    ) -> None:
        self.config, self.data, self.device, self.reference = config, data, device, reference
        self.parallel = parallel
        self.epochs = config.epochs_target
        self.source_model = source_model.eval().requires_grad_(False)  # frozen: M_S in Eq. 3
        self.target = copy.deepcopy(source_model).train().requires_grad_(True)
        with seeded_init(config.seed, "init_discriminator"):
            self.disc = Discriminator().to(device)
        parallel.broadcast(self.disc)
        self.opt_t = adam(self.target.parameters(), config, config.lr)
        self.opt_d = adam(self.disc.parameters(), config, config.lr_discriminator)
        self.n_classes = len(np.unique(reference.labels))
        self._class_means: np.ndarray | None = None

    def run_epoch(self, epoch: int) -> Dict[str, Any]:
        config = self.config
        gen = torch.Generator().manual_seed(stream_seed(config.seed, "batches_target", epoch))
        rec: Dict[str, Any] = {}
        if config.adversarial:
            rec.update(self._adversarial(gen))
        if config.magnet:
            rec["magnet_loss"] = self._magnet(gen, epoch)
        return self.parallel.mean(rec)

    def _adversarial(self, gen: torch.Generator) -> Dict[str, float]:
        config, src, tgt, parallel = self.config, self.data.src_train, self.data.tgt_train, self.parallel
        d_losses: List[torch.Tensor] = []
        g_losses: List[torch.Tensor] = []
        d_correct: List[torch.Tensor] = []
        for _ in range(config.adversarial_passes):
            pairs = zip(epoch_batches(len(src), config.batch_size, gen),
                        epoch_batches(len(tgt), config.target_batch_size, gen))
            for src_batch, tgt_batch in pairs:
                (si, _), (ti, t_share) = parallel.shard(src_batch), parallel.shard(tgt_batch)
                d_share = (len(si) + len(ti)) / (len(src_batch) + len(tgt_batch))
                with torch.no_grad():
                    f_src = self.source_model.encoder(src.images[si.to(self.device)])
                f_tgt = self.target.encoder(tgt.images[ti.to(self.device)])
                s_logit, t_logit = self.disc(f_src), self.disc(f_tgt.detach())
                d_loss = discriminator_loss(s_logit, t_logit)
                zero_grad(self.opt_d, config)
                d_loss.backward()
                parallel.sync_grads(self.disc.parameters(), d_share)
                self.opt_d.step()
                # D is frozen for the encoder's step: its gradients would only be cleared unused
                self.disc.requires_grad_(False)
                g_loss = confusion_loss(self.disc(f_tgt))
                zero_grad(self.opt_t, config)
                g_loss.backward()
                parallel.sync_grads(self.target.parameters(), t_share)
                self.opt_t.step()
                self.disc.requires_grad_(True)
                d_losses.append(d_loss.detach())
                g_losses.append(g_loss.detach())
                d_correct.append(torch.cat([s_logit > 0, t_logit < 0]).float().mean())
        # d_acc near 1 means D wins outright (adaptation stalls); near 0.5, D is fooled
        return {"d_loss": mean(d_losses), "g_loss": mean(g_losses), "d_acc": mean(d_correct)}

    def centers(self, epoch: int) -> np.ndarray:
        if self.config.centers == "class_means":
            if self._class_means is None:  # the source model is frozen: once per run
                self._class_means = class_means(self.reference.emb, self.reference.labels)
            return self._class_means
        return kmeans_centers(self.reference.emb, self.n_classes, stream_seed(self.config.seed, "centers", epoch))

    def _magnet(self, gen: torch.Generator, epoch: int) -> float:
        config, tgt = self.config, self.data.tgt_train
        centers = torch.from_numpy(self.centers(epoch)).to(self.device)
        losses: List[torch.Tensor] = []
        for batch in epoch_batches(len(tgt), config.target_batch_size, gen):
            ti, share = self.parallel.shard(batch)
            x = tgt.images[ti.to(self.device)]
            emb = self.target(x) if config.magnet_scope == "model" else self.target.embed_detached_conv(x)
            loss = center_magnet_loss(emb, centers)
            zero_grad(self.opt_t, config)
            loss.backward()
            self.parallel.sync_grads(self.target.parameters(), share)
            self.opt_t.step()
            losses.append(loss.detach())
        return mean(losses)

    def state_dict(self) -> Dict[str, Any]:
        return {
            "target": self.target.state_dict(), "discriminator": self.disc.state_dict(),
            "opt_target": self.opt_t.state_dict(), "opt_discriminator": self.opt_d.state_dict(),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.target.load_state_dict(state["target"])
        self.disc.load_state_dict(state["discriminator"])
        self.opt_t.load_state_dict(state["opt_target"])
        self.opt_d.load_state_dict(state["opt_discriminator"])


__all__ = ["MaddaTargetStage", "class_means", "kmeans_centers"]
