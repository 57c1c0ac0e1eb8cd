"""ADDA (Tzeng et al. 2017), the paper's main baseline, as a training method of this framework.

Stage 1 trains the LeNet encoder and a softmax classifier with cross-entropy on the source.
Stage 2 starts a target encoder from the source encoder and trains it adversarially against the
same discriminator as M-ADDA (no center magnet). A target image gets the source classifier's
label on its target-encoder features (:class:`madda_rs.evaluation.ClassifierScorer`)."""

from __future__ import annotations

from typing import Any, Dict, List

import numpy as np
import torch
import torch.nn.functional as F

from ..config import TrainConfig
from ..domains import ImageSet
from ..models import EmbeddingNet
from ..runtime import Parallel, seeded_init, stream_seed
from . import SourceStageBase, adam, epoch_batches, mean, zero_grad
from .madda import MaddaTargetStage


class SoftmaxSourceStage(SourceStageBase):
    """The source encoder and classifier: EmbeddingNet's head outputs one logit per class."""

    def __init__(self, config: TrainConfig, source: ImageSet, device: torch.device,
                 parallel: Parallel = Parallel()) -> None:
        assert source.labels is not None
        self.config, self.source, self.device, self.parallel = config, source, device, parallel
        self.epochs = config.epochs_source
        classes, targets = np.unique(source.labels.cpu().numpy(), return_inverse=True)
        self.targets = torch.from_numpy(targets.astype(np.int64)).to(device)  # class indices 0..C-1
        with seeded_init(config.seed, "init_source"):
            self.model = EmbeddingNet(len(classes), source.shape).to(device)
        parallel.broadcast(self.model)
        self.optimizer = adam(self.model.parameters(), config, config.lr)

    def run_epoch(self, epoch: int) -> Dict[str, Any]:
        config, parallel = self.config, self.parallel
        self.model.train()
        losses: List[torch.Tensor] = []
        correct: List[torch.Tensor] = []
        gen = torch.Generator().manual_seed(stream_seed(config.seed, "batches_source", epoch))
        for batch in epoch_batches(len(self.source), config.batch_size, gen):
            idx, share = parallel.shard(batch)
            idx = idx.to(self.device)
            logits = self.model(self.source.images[idx])
            loss = F.cross_entropy(logits, self.targets[idx])
            zero_grad(self.optimizer, config)
            loss.backward()
            parallel.sync_grads(self.model.parameters(), share)
            self.optimizer.step()
            losses.append(loss.detach())
            correct.append((logits.argmax(1) == self.targets[idx]).float().mean())
        return parallel.mean({"loss": mean(losses), "train_accuracy": mean(correct)})


class AddaTargetStage(MaddaTargetStage):
    """M-ADDA's adversarial stage without the magnet: the target encoder against the discriminator.
    The classifier (the head) is never trained here: prediction uses the source classifier."""

    def run_epoch(self, epoch: int) -> Dict[str, Any]:
        gen = torch.Generator().manual_seed(stream_seed(self.config.seed, "batches_target", epoch))
        return self.parallel.mean(self._adversarial(gen, None))


__all__ = ["SoftmaxSourceStage", "AddaTargetStage"]
