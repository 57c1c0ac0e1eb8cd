"""Stage 2 of M-ADDA (Algorithm 2): the target model, initialised from the source model, trained
adversarially against a discriminator on encoder features (Eq. 3) and pulled by the center
magnet toward the nearest source class centre (Eq. 4).

The 'improved' preset's additions live here too, each behind its own setting: augmented batches,
magnet labels from clustering the target embeddings (started at the source centres, kept where
the kNN vote agrees), information maximisation on soft assignments to the centres, and a
mean-teacher (EMA) copy of the target model that labels the clusters and is the stage's output."""

from __future__ import annotations

import copy
from typing import Any, Dict, List

import numpy as np
import torch

import madda_rs

from ..config import TrainConfig
from ..domains import RunData
from ..evaluation import SourceReference, class_means, embed
from ..losses import (
    center_magnet_loss,
    confusion_loss,
    discriminator_loss,
    information_maximisation_loss,
    labelled_magnet_loss,
)
from ..models import Discriminator, EmbeddingNet
from ..runtime import Parallel, seeded_init, stream_seed
from . import adam, augment, epoch_batches, mean, zero_grad

# Lloyd iterations of the target clustering (magnet_labels='clusters'); it starts at the source
# centres, so a few suffice and each cluster keeps its class.
CLUSTER_ITERATIONS = 10


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
        self.classes = np.unique(reference.labels)
        self.n_classes = len(self.classes)
        self._class_means: np.ndarray | None = None
        # the mean teacher: an exponential moving average of the target model's weights
        self.teacher = copy.deepcopy(self.target).eval().requires_grad_(False) if config.ema_decay > 0 else None
        if config.im_weight > 0:
            # soft assignments use distances in units of the source classes' own spread, so their
            # sharpness does not depend on the embedding's scale
            centers = class_means(reference.emb, reference.labels)
            own = centers[np.searchsorted(self.classes, reference.labels)]
            self.spread = float(((reference.emb - own) ** 2).sum(1).mean())

    @property
    def output(self) -> EmbeddingNet:
        """The model this stage yields: the mean teacher when there is one, else the target model."""
        return self.teacher if self.teacher is not None else self.target

    def _step_target(self) -> None:
        self.opt_t.step()
        if self.teacher is not None:
            with torch.no_grad():  # the update torch.optim.swa_utils.get_ema_multi_avg_fn makes, in place
                torch._foreach_lerp_(list(self.teacher.parameters()), list(self.target.parameters()),
                                     1.0 - self.config.ema_decay)

    def _warp(self, images: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        return augment(images, gen) if gen is not None else images

    def run_epoch(self, epoch: int) -> Dict[str, Any]:
        config = self.config
        gen = torch.Generator().manual_seed(stream_seed(config.seed, "batches_target", epoch))
        warp = (torch.Generator().manual_seed(stream_seed(config.seed, "augment", 1, epoch, self.parallel.rank))
                if config.augment else None)
        rec: Dict[str, Any] = {}
        if config.adversarial:
            rec.update(self._adversarial(gen, warp))
        if config.magnet or config.im_weight > 0:
            rec.update(self._magnet(gen, warp, epoch))
        return self.parallel.mean(rec)

    def _adversarial(self, gen: torch.Generator, warp: torch.Generator | None) -> Dict[str, float]:
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
                    f_src = self.source_model.encoder(self._warp(src.images[si.to(self.device)], warp))
                f_tgt = self.target.encoder(self._warp(tgt.images[ti.to(self.device)], warp))
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
                self._step_target()
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

    def cluster_labels(self, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Centre index per target training image from k-means on the target embeddings (of the
        teacher, when there is one) started at the source centres, and whether the kNN vote over
        the source embeddings agrees with it (the images the magnet keeps)."""
        emb = embed(self.output, self.data.tgt_train.images)
        refined = centers.copy()
        for _ in range(CLUSTER_ITERATIONS):
            assign = madda_rs.knn_search(refined, emb, 1, threads=self.config.threads)[1][:, 0]
            for j in np.unique(assign):
                refined[j] = emb[assign == j].mean(axis=0)
        assign = madda_rs.knn_search(refined, emb, 1, threads=self.config.threads)[1][:, 0]
        agree = self.classes[assign] == self.reference.predict_embedded(emb)
        return assign, agree

    def _magnet(self, gen: torch.Generator, warp: torch.Generator | None, epoch: int) -> Dict[str, float]:
        config, tgt = self.config, self.data.tgt_train
        centers_np = self.centers(epoch)
        centers = torch.from_numpy(centers_np).to(self.device)
        rec: Dict[str, float] = {}
        if config.magnet and config.magnet_labels == "clusters":
            assign_np, agree_np = self.cluster_labels(centers_np)
            assign, agree = torch.from_numpy(assign_np).to(self.device), torch.from_numpy(agree_np).to(self.device)
            rec["magnet_kept"] = float(agree_np.mean())
        losses: List[torch.Tensor] = []
        im_losses: List[torch.Tensor] = []
        for batch in epoch_batches(len(tgt), config.target_batch_size, gen):
            ti, share = self.parallel.shard(batch)
            rows = ti.to(self.device)
            x = self._warp(tgt.images[rows], warp)
            emb = self.target(x) if config.magnet_scope == "model" else self.target.embed_detached_conv(x)
            loss = emb.sum() * 0.0
            if config.magnet:
                if config.magnet_labels == "nearest":
                    magnet = center_magnet_loss(emb, centers)
                else:
                    magnet = labelled_magnet_loss(emb, centers, assign[rows], agree[rows])
                loss = loss + magnet
                losses.append(magnet.detach())
            if config.im_weight > 0:
                im = information_maximisation_loss(emb, centers, self.spread)
                loss = loss + config.im_weight * im
                im_losses.append(im.detach())
            zero_grad(self.opt_t, config)
            loss.backward()
            self.parallel.sync_grads(self.target.parameters(), share)
            self._step_target()
        if losses:
            rec["magnet_loss"] = mean(losses)
        if im_losses:
            rec["im_loss"] = mean(im_losses)
        return rec

    def state_dict(self) -> Dict[str, Any]:
        state = {
            "target": self.target.state_dict(), "discriminator": self.disc.state_dict(),
            "opt_target": self.opt_t.state_dict(), "opt_discriminator": self.opt_d.state_dict(),
        }
        if self.teacher is not None:
            state["teacher"] = self.teacher.state_dict()
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.target.load_state_dict(state["target"])
        if self.teacher is not None:
            self.teacher.load_state_dict(state["teacher"])
        self.disc.load_state_dict(state["discriminator"])
        self.opt_t.load_state_dict(state["opt_target"])
        self.opt_d.load_state_dict(state["opt_discriminator"])


__all__ = ["MaddaTargetStage", "class_means", "kmeans_centers"]
