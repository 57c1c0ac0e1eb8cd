"""ADDA (Tzeng et al. 2017), the paper's main baseline.

Stage 1 trains the LeNet encoder and a softmax classifier with cross-entropy on the source.
Stage 2 starts a target encoder from the source encoder and trains it adversarially against the
same discriminator as M-ADDA (:class:`~madda_rs.methods.common.AdversarialTargetStage`; no center
magnet). A target image gets the source classifier's label on its target-encoder features."""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from ..config import TrainConfig
from ..data.images import ImageSet
from ..data.run_data import RunData
from ..models import EmbeddingNet
from ..run.processes import Parallel
from ..scores.predictors import ClassifierPredictor, KnnPredictor
from . import Method, register_method
from .common import (
    AdversarialSettings,
    AdversarialTargetStage,
    BatchResult,
    SourceStage,
    class_indices,
    cross_entropy,
)

# The k of ADDA's runs' label-free scores that vote by neighbours (reverse accuracy's kNN): the
# paper preset's, as every ADDA run has used. ADDA's own labels come from its classifier.
SCORE_K = 2


class SoftmaxSourceStage(SourceStage):
    """The source encoder and classifier: EmbeddingNet's head outputs one logit per class."""

    def __init__(self, config: TrainConfig, source: ImageSet, device: torch.device,
                 parallel: Parallel = Parallel()) -> None:
        assert source.labels is not None
        n_classes, self.targets = class_indices(source.labels, device)
        super().__init__(config, source, device, parallel, n_classes)

    def batch_loss(self, images: torch.Tensor, rows: torch.Tensor, epoch: int, step: int) -> BatchResult:
        loss, accuracy = cross_entropy(self.forward(images), self.targets[rows.to(self.device)])
        return loss, {"loss": loss.detach(), "train_accuracy": accuracy}


class AddaTargetStage(AdversarialTargetStage):
    """The target encoder against the discriminator, nothing else. The classifier (the head) is
    never trained here: prediction uses the source classifier."""

    def run_epoch(self, epoch: int) -> Dict[str, Any]:
        return self.parallel.mean(self.adversarial_epoch(self.batches(epoch), None))


@register_method("adda")
class Adda(Method):
    summary = "softmax source classifier, adversarial only (Tzeng et al. 2017, the paper's baseline)"
    source_only_label = "softmax classifier"

    def source_stage(self, config: TrainConfig, source: ImageSet, device: torch.device,
                     parallel: Parallel) -> SoftmaxSourceStage:
        return SoftmaxSourceStage(config, source, device, parallel)

    def target_stage(self, config: TrainConfig, source_model: EmbeddingNet, predictor: KnnPredictor, data: RunData,
                     device: torch.device, parallel: Parallel) -> AddaTargetStage:
        return AddaTargetStage(config, source_model, data, device, parallel)

    def predictor(self, model: EmbeddingNet, source: ImageSet, config: TrainConfig,
                  parallel: Optional[Parallel] = None, k: Optional[int] = None) -> ClassifierPredictor:
        return ClassifierPredictor(model, source, k or SCORE_K, config.threads, parallel or Parallel())

    # the adversarial stage's settings; the triplet model's, the magnet's and the kNN vote's are
    # M-ADDA's. Its presets are the paper's and the released code's (improved and labelfree are
    # M-ADDA's own recipes).
    settings = AdversarialSettings

    def check(self, config: TrainConfig) -> None:
        if config.augment:
            raise ValueError("--augment belongs to M-ADDA's recipes; --method adda trains on the images as they are")

    def run_name(self, config: TrainConfig) -> str:
        return "adda"  # its runs predate presets in run names; the preset shows in config.json


__all__ = ["Adda", "SoftmaxSourceStage", "AddaTargetStage"]
