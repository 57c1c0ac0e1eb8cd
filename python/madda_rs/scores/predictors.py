"""How a method labels target images from its source model: a kNN vote over the labelled source
embeddings (M-ADDA, Algorithm 3), or the source classifier's argmax (ADDA). A method names its
predictor (:attr:`madda_rs.methods.Method.predictor`)."""

from __future__ import annotations

import copy
from typing import Optional, Tuple, Union

import numpy as np
import torch

from .. import native
from ..data.images import ImageSet
from ..models import EmbeddingNet
from ..run.processes import Parallel

# Embedding batch: with channels-last weights, 512 images a batch ran LeNet 3x faster on a 2-core
# CPU than contiguous weights in batches of 2048 (benches/bench_predict.py's setting).
EMBED_BATCH = 512
# ... of 28x28 images: larger images go in batches of as many pixels (8 at 224x224, where 512 would
# hold gigabytes of a ResNet's activations), so memory does not grow with the image size.
EMBED_PIXELS = EMBED_BATCH * 28 * 28


def embed_batch_size(shape: Tuple[int, ...]) -> int:
    """Images per embedding batch for images of (C, H, W) `shape`: EMBED_BATCH up to 28x28."""
    return max(1, min(EMBED_BATCH, EMBED_PIXELS // max(1, shape[-1] * shape[-2])))


def for_inference(model: EmbeddingNet) -> EmbeddingNet:
    """An eval-mode copy of `model` with channels-last weights: the layout the CPU's convolution
    kernels run fastest. Training and prediction embed through it alike, so their numbers agree."""
    return copy.deepcopy(model).eval().to(memory_format=torch.channels_last)


@torch.no_grad()
def embed(model: EmbeddingNet, images: Union[ImageSet, torch.Tensor], batch_size: Optional[int] = None) -> np.ndarray:
    """(N, D) float32 embeddings in eval mode (`model` itself is left as it was) of an image set
    (batch by batch onto the model's device; a streamed set decodes ahead) or of model input, in
    batches of `batch_size` (default: :func:`embed_batch_size`)."""
    fast = for_inference(model)
    batch_size = batch_size or embed_batch_size(tuple(images.shape[1:]) if isinstance(images, torch.Tensor)
                                                else images.shape)
    if isinstance(images, ImageSet):
        device = next(fast.parameters()).device
        batches = torch.arange(len(images)).split(batch_size)
        out = [fast(x) for x in images.stream(batches, device)]
    else:
        out = [fast(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return torch.cat(out).float().cpu().numpy() if out else np.zeros((0, _out_dim(model)), np.float32)


def _out_dim(model: EmbeddingNet) -> int:
    return model.spec.out_dim


class KnnPredictor:
    """The labelled source embeddings that Algorithm 3 votes over (computed once per source model).

    In a torchrun job every rank searches its shard of the source rows and the ranks' exact
    candidates are merged (:func:`madda_rs.merge_knn`): the votes equal one process's, and each
    rank does 1/N of the search. Every rank must then call :meth:`predict` together."""

    kind = "knn"  # how madda_rs.inference labels new images with it

    def __init__(self, model: EmbeddingNet, source: ImageSet, k: int, threads: Optional[int],
                 parallel: Parallel = Parallel()) -> None:
        assert source.labels is not None
        self.emb = embed(model, source)  # all rows on every rank: the magnet's centres need them
        self.labels = source.labels.cpu().numpy()
        self.k, self.threads, self.parallel = k, threads, parallel

    def predict(self, model: EmbeddingNet, images: Union[ImageSet, torch.Tensor]) -> np.ndarray:
        return self.predict_embedded(embed(model, images))

    def predict_embedded(self, tgt: np.ndarray) -> np.ndarray:
        """Algorithm 3 on target embeddings already computed."""
        if self.parallel.world == 1:
            return native.knn_predict(self.emb, self.labels, tgt, self.k, threads=self.threads)
        bounds = np.linspace(0, len(self.labels), self.parallel.world + 1).astype(int)
        lo, hi = bounds[self.parallel.rank], bounds[self.parallel.rank + 1]
        parts = self.parallel.gather(self.candidates(lo, hi, tgt))
        offsets = [int(b) for b, part in zip(bounds[:-1], parts) if part is not None]
        _, _, labels = native.merge_knn([p for p in parts if p is not None], self.k, offsets=offsets,
                                        threads=self.threads)
        return native.knn_vote(labels)

    def candidates(self, lo: int, hi: int, tgt: np.ndarray) -> Optional[tuple]:
        """This rank's exact kNN candidates among source rows lo..hi (None when it holds none)."""
        if hi == lo:
            return None  # more ranks than source rows
        index = native.KnnIndex(self.emb.shape[1])
        index.add(self.emb[lo:hi], self.labels[lo:hi])
        return index.candidates(tgt, min(self.k, hi - lo), threads=self.threads)

    def accuracy(self, model: EmbeddingNet, test: ImageSet) -> float:
        assert test.labels is not None
        return float((self.predict(model, test) == test.labels.cpu().numpy()).mean())

    def probabilities(self, emb: np.ndarray) -> np.ndarray:
        """(n, C) soft predictions, columns in ascending label order: what the label-free
        validators read. For a kNN vote, soft assignments to the source class means in units of
        the classes' own spread (the assignments M-ADDA's IM loss sharpens)."""
        from .label_free import class_means, class_spread, soft_predictions

        if not hasattr(self, "_centres"):
            self._centres = class_means(self.emb, self.labels), class_spread(self.emb, self.labels)
        return soft_predictions(emb, *self._centres)


class ClassifierPredictor(KnnPredictor):
    """ADDA's prediction: the source classifier's label (the model's head gives one logit per
    class), not a kNN vote. `emb` holds the source logits, unused by ADDA's stages."""

    kind = "classifier"

    def __init__(self, model: EmbeddingNet, source: ImageSet, k: int, threads: Optional[int],
                 parallel: Parallel = Parallel()) -> None:
        super().__init__(model, source, k, threads, parallel)
        self.classes = np.unique(self.labels)

    def predict_embedded(self, tgt: np.ndarray) -> np.ndarray:
        return self.classes[tgt.argmax(axis=1)]

    def probabilities(self, emb: np.ndarray) -> np.ndarray:
        """The softmax of the classifier's logits."""
        z = emb.astype(np.float64) - emb.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)


Predictor = KnnPredictor  # the interface every predictor offers (predict, predict_embedded, accuracy)

__all__ = ["embed", "embed_batch_size", "for_inference", "EMBED_BATCH", "KnnPredictor", "ClassifierPredictor",
           "Predictor"]
