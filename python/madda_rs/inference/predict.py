"""Labels for new images from a finished run (``madda-rs predict``, :func:`load_run`).

    import madda_rs

    run = madda_rs.load_run("runs/m2u")
    out = run.predict(images)        # uint8 (N, C, H, W) or (N, H, W), a folder, or a list of files
    out["label"], out["vote_share"], out["centre_distance"], out["unfamiliar"]

A run folder keeps what this needs: the scored model (target.pt), the source embeddings and
labels (.npy, memory-mapped and searched through :class:`madda_rs.KnnIndex`), the class names
and the image geometry (predictor.json). The arithmetic is :mod:`.standalone`'s, which an
exported folder ships as its predict.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from ..run.folder import PREDICTOR_FILE, SOURCE_EMBEDDINGS_FILE, SOURCE_LABELS_FILE, TARGET_MODEL_FILE, load_model
from ..scores.predictors import for_inference
from .standalone import NeighbourVote, embed_batches, load_inputs, write_predictions


class TrainedRun:
    """A finished run, ready to label images: its target model and its source embeddings."""

    def __init__(self, run_dir: os.PathLike | str, *, k: Optional[int] = None, threads: Optional[int] = None,
                 device: str = "cpu") -> None:
        self.path = Path(run_dir)
        needed = (TARGET_MODEL_FILE, SOURCE_EMBEDDINGS_FILE, SOURCE_LABELS_FILE, PREDICTOR_FILE)
        missing = [name for name in needed if not (self.path / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{self.path} lacks {', '.join(missing)}: is it a run finished by 'madda-rs "
                                    f"train' (runs finished before predict existed lack the source embeddings)?")
        self.info: Dict[str, Any] = json.loads((self.path / PREDICTOR_FILE).read_text())
        if k is not None and k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k or int(self.info["k"])
        self.class_names = list(self.info["class_names"])
        self.shape: Tuple[int, int, int] = tuple(self.info["shape"])  # type: ignore[assignment]
        self.model = for_inference(load_model(self.path / TARGET_MODEL_FILE, device))
        self.threads = threads
        self.vote = NeighbourVote(np.load(self.path / SOURCE_EMBEDDINGS_FILE, mmap_mode="r"),
                                  np.load(self.path / SOURCE_LABELS_FILE), self.class_names, self.k,
                                  self.info["predictor"], threads)

    def predict(self, images: Any) -> Dict[str, np.ndarray]:
        """label (class name), label_index, vote_share, centre_distance, unfamiliar, one per image.

        `images`: uint8 (N, C, H, W) or (N, H, W) in the run's geometry (a NumPy array or CPU
        tensor), or a folder, file or list of files and folders (decoded to the run's geometry)."""
        return self.vote(embed_batches(self._model, self.images(images)))

    def images(self, images: Any) -> np.ndarray:
        """uint8 (N, C, H, W) in the run's geometry."""
        if isinstance(images, (str, os.PathLike)):
            images = [images]
        if isinstance(images, (list, tuple)):
            return load_inputs([str(x) for x in images], self.shape, self.threads)[0]
        array = np.asarray(images.cpu() if hasattr(images, "cpu") else images)
        if array.ndim == 3:
            array = array[:, None]
        if array.dtype != np.uint8 or array.ndim != 4 or tuple(array.shape[1:]) != self.shape:
            raise ValueError(f"images: expected uint8 (N, {', '.join(map(str, self.shape))}) for this run, got "
                             f"{array.dtype} {array.shape}")
        return array

    def _model(self, x: Any) -> Any:
        return self.model(x.to(next(self.model.parameters()).device)).cpu()

    def predict_files(self, inputs: Sequence[str], out: os.PathLike | str) -> Tuple[Path, int]:
        """Label image files, folders and .npz files; write one row per image to `out` (.csv,
        .jsonl or .npz). Returns the file and the number of rows."""
        images, id_name, ids = load_inputs(list(inputs), self.shape, self.threads)
        return write_predictions(Path(out), id_name, ids, self.predict(images)), len(ids)


def load_run(run_dir: os.PathLike | str, *, k: Optional[int] = None, threads: Optional[int] = None,
             device: str = "cpu") -> TrainedRun:
    """A finished run folder, ready to :meth:`~TrainedRun.predict` (k: the run's unless given)."""
    return TrainedRun(run_dir, k=k, threads=threads, device=device)


__all__ = ["TrainedRun", "load_run"]
