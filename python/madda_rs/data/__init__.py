"""Data: the files of the registered datasets (:mod:`.files`), image folders (:mod:`.folders`),
digits rendered from fonts (:mod:`.synth`) and the domains a run adapts between (:mod:`.domains`:
the registry, the user's own images, the image sets of one run). Importing this package is light
(no torch)."""

from pathlib import Path

# At most this many held-out labelled training images score a run (RunData.tgt_holdout,
# holdout_accuracy): enough to tell settings apart by a point, cheap enough for every evaluation.
HOLDOUT_IMAGES = 2000


def display_name(name: str) -> str:
    """A domain's name in tables and figures: MNIST for a registered name, the stem of an .npz
    file, the folder's own name for an image folder."""
    if name.endswith(".npz"):
        return Path(name).stem
    if "/" in name or Path(name).is_dir():
        return Path(name).name
    return name.upper()
