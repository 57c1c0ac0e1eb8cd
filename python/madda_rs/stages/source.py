"""Stage 1 (Algorithm 1): the source model trained with the triplet loss on labelled source images.

Triplets are enumerated per batch by the native core (:func:`madda_rs.triplets`): one per
same-label pair, with negatives drawn as the config says."""

from __future__ import annotations

from typing import Any, Dict, List

import torch

import madda_rs

from ..config import TrainConfig
from ..domains import ImageSet
from ..losses import pairwise_sq_dists, triplet_loss
from ..models import EmbeddingNet
from ..runtime import Parallel, seeded_init, stream_seed
from . import SourceStageBase, adam, augment, epoch_batches, mean, zero_grad


class TripletSourceStage(SourceStageBase):
    def __init__(self, config: TrainConfig, source: ImageSet, device: torch.device,
                 parallel: Parallel = Parallel()) -> None:
        assert source.labels is not None
        self.config, self.source, self.device, self.parallel = config, source, device, parallel
        self.epochs = config.epochs_source
        self.labels = source.labels.cpu().numpy()
        with seeded_init(config.seed, "init_source"):
            self.model = EmbeddingNet(config.embedding_dim, source.shape).to(device)
        parallel.broadcast(self.model)
        self.optimizer = adam(self.model.parameters(), config, config.lr)

    def run_epoch(self, epoch: int) -> Dict[str, Any]:
        config, model = self.config, self.model
        model.train()
        losses: List[torch.Tensor] = []
        active: List[torch.Tensor] = []
        gen = torch.Generator().manual_seed(stream_seed(config.seed, "batches_source", epoch))
        # Indices stay on the CPU for the labels (triplets are enumerated there); only the
        # device copy goes to the model, so a GPU run never syncs to read labels back.
        parallel = self.parallel
        warp = torch.Generator().manual_seed(stream_seed(config.seed, "augment", 0, epoch, parallel.rank))
        # the rank goes into the triplet stream only when there are ranks, so one process draws as before
        rank = (parallel.rank,) if parallel.world > 1 else ()
        for step, batch in enumerate(epoch_batches(len(self.source), config.batch_size, gen)):
            idx, share = parallel.shard(batch)
            images = self.source.images[idx.to(self.device)]
            emb = model(augment(images, warp) if config.augment else images)
            sq = None
            if config.negatives != "random":
                with torch.no_grad():
                    sq = pairwise_sq_dists(emb, emb).double().cpu().numpy()
            trip = madda_rs.triplets(
                self.labels[idx.numpy()], seed=stream_seed(config.seed, "triplets", epoch, step, *rank),
                negatives=config.negatives, sq_dists=sq, margin=config.margin, threads=config.threads,
            )
            if not parallel.any(len(trip) > 0):
                continue  # no same-label pair anywhere in the batch
            if len(trip):
                loss, n_active = triplet_loss(emb, torch.from_numpy(trip).to(self.device), config.margin)
            else:  # other ranks have triplets: take part in the step with a zero gradient
                loss, n_active = emb.sum() * 0.0, torch.zeros((), dtype=torch.int64)
            zero_grad(self.optimizer, config)
            loss.backward()
            parallel.sync_grads(model.parameters(), share)
            self.optimizer.step()
            losses.append(loss.detach())
            active.append(n_active.float())
        return parallel.mean({"loss": mean(losses), "active_triplets": mean(active)})
