"""Named random streams: every random draw of a run, figures and scores included, comes from one.

One seed feeds every stream; each stream has a name and a fixed index here, so streams never
collide and one can change without moving the others. A stream is derived afresh per use (per
epoch, per step), never carried along, so a resumed run draws exactly what an uninterrupted one
would. 'subset' is drawn from ``--subset-seed`` when given, so the data and the training
randomness can be varied apart.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

SEED_STREAMS = {
    "subset": 0,  # which training images the ADDA protocol keeps
    "init_source": 1,  # source model weights
    "init_discriminator": 2,  # discriminator weights (the target model starts as the source model)
    "batches_source": 3,  # stage 1 batch order
    "triplets": 4,  # stage 1 triplet sampling (negatives)
    "batches_target": 5,  # stage 2 batch order
    "centers": 6,  # KMeans centres (the 'official' preset), in training and in figures alike
    "holdout": 7,  # which left-out training images score a run (data.HOLDOUT_IMAGES)
    "augment": 8,  # random warps of training batches (TrainConfig.augment)
    "scores": 9,  # what scores draw: SND's target images, the source test check, DEV's split, ClassAMI's k-means
    "figures": 10,  # which points a t-SNE shows, and t-SNE's own initialisation
    "synth": 11,  # every knob of each synth-digits image (data.synth), from --synth-seed, per split and image
    "tune": 12,  # which candidates madda-rs tune draws from its search space
    "composite": 13,  # the photo patch of each composited image (data.composite), per domain, split and image
    "seven_segment": 14,  # every knob of each seven-segment digit (data.seven_segment), per split and image
    "hand": 15,  # every knob of each hand-digits image (data.hand), per split and image
    "mixval": 16,  # which target images MixVal mixes in pairs (scores.evaluate.target_mixval)
    "init_source_head": 17,  # the source stage's softmax head over the embedding (TrainConfig.source_ce_weight)
}
# Apart from the run's seed: the pooled USPS re-split (data.domains.pooled_usps) is drawn from
# --usps-split-seed alone, so every run of a table scores on one test set (usps_split_rng).



def stream_seed(seed: int, stream: str, *extra: int) -> int:
    """A 63-bit seed for `stream` (a key of :data:`SEED_STREAMS`), optionally per step (`extra`)."""
    words = np.random.SeedSequence([seed, SEED_STREAMS[stream], *extra]).generate_state(2, np.uint32)
    return int((int(words[0]) << 31) ^ int(words[1]))


def torch_generator(seed: int, stream: str, *extra: int) -> torch.Generator:
    """A CPU torch generator on `stream` (batches, augmentation)."""
    return torch.Generator().manual_seed(stream_seed(seed, stream, *extra))


def numpy_rng(seed: int, stream: str, *extra: int) -> np.random.Generator:
    """A NumPy generator on `stream` (samples drawn by scores and figures)."""
    return np.random.default_rng(stream_seed(seed, stream, *extra))


def usps_split_rng(usps_split_seed: int) -> np.random.Generator:
    """The pooled USPS re-split's generator: seeded with the bare ``usps_split_seed``, as when the
    committed results were made (a SeedSequence stream would move every pooled test digit)."""
    return np.random.default_rng(usps_split_seed)


@contextmanager
def seeded_init(seed: int, stream: str) -> Iterator[None]:
    """Build modules inside this block to draw their initial weights from `stream` alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(seed, stream))
        yield


__all__ = ["SEED_STREAMS", "stream_seed", "torch_generator", "numpy_rng", "usps_split_rng", "seeded_init"]
