"""Predict labels for new images with a finished run: one row per image with its label, the share
of the k neighbours that voted for it, the squared distance to that class's source centre, and
whether that distance is beyond the source's own (``unfamiliar``).

This file and :mod:`madda_rs.data.decode` are self-contained on purpose: ``madda-rs export``
copies them verbatim as ``predict.py`` and ``decode.py`` into a folder that ships without
madda_rs's training code, so they import only torch, NumPy, Pillow and madda_rs's native API (the
exact kNN). ``madda-rs predict`` runs the same code.

    python DIR/predict.py INPUT... --out FILE      # in an exported folder
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

try:  # inside madda_rs
    from ..data.decode import IMAGE_SUFFIXES, decode_images, image_files
except ImportError:  # an exported folder: madda_rs/data/decode.py ships beside this file as decode.py
    import importlib.util as _util

    _spec = _util.spec_from_file_location("madda_rs_export_decode", Path(__file__).resolve().parent / "decode.py")
    assert _spec is not None and _spec.loader is not None
    _decode = _util.module_from_spec(_spec)
    _spec.loader.exec_module(_decode)
    IMAGE_SUFFIXES, decode_images, image_files = _decode.IMAGE_SUFFIXES, _decode.decode_images, _decode.image_files

# A prediction is unfamiliar when its distance to its class's centre exceeds this quantile of the
# source images' own distances to their class centres.
UNFAMILIAR_QUANTILE = 0.99
FIELDS = ("label", "vote_share", "centre_distance", "unfamiliar")


def load_inputs(inputs: Sequence[str], shape: Tuple[int, int, int], threads: Optional[int] = None,
                ) -> Tuple[np.ndarray, str, List[Any]]:
    """(uint8 images (N, C, H, W), the id column's name, one id per image) from image files,
    folders (any depth) and .npz files (their 'images' array, (N, H, W) or (N, C, H, W)).

    The id is the path; for a single .npz given alone it is the row index ('index')."""
    if not inputs:
        raise ValueError("no input: give image files, folders or .npz files")
    parts: List[np.ndarray] = []
    ids: List[Any] = []
    files: List[Path] = []
    only_npz = len(inputs) == 1 and inputs[0].endswith(".npz")
    for name in inputs:
        path = Path(name).expanduser()
        if name.endswith(".npz"):
            images = _npz_images(path, shape)
            parts.append(images)
            ids += list(range(len(images))) if only_npz else [f"{name}[{i}]" for i in range(len(images))]
        elif path.is_dir():
            found = image_files(path)
            if not found:
                raise ValueError(f"{path}: no images at any depth ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif path.is_file():
            if not name.lower().endswith(IMAGE_SUFFIXES):
                raise ValueError(f"{path}: not an image file ({', '.join(IMAGE_SUFFIXES)}) nor an .npz")
            files.append(path)
        else:
            raise ValueError(f"{path}: no such file or folder")
    if files:
        parts.append(decode_images(files, shape, threads))
        ids += [str(f) for f in files]
    return np.concatenate(parts) if len(parts) > 1 else parts[0], "index" if only_npz else "path", ids


def _npz_images(path: Path, shape: Tuple[int, int, int]) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as f:
            images = f["images"]
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{path}: expected an .npz with an 'images' array ({exc})") from None
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(shape) or images.dtype != np.uint8:
        raise ValueError(f"{path}: 'images' must be uint8 (N, {shape[0]}, {shape[1]}, {shape[2]}) for this run, got "
                         f"{images.dtype} {images.shape}")
    return images


def to_model_input(images: np.ndarray) -> Any:
    """uint8 (N, C, H, W) -> float32 in [-1, 1], the arithmetic of training (pixel / 255 * 2 - 1)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0).mul_(2.0).sub_(1.0)


class NeighbourVote:
    """Algorithm 3 over a run's source embeddings (memory-mapped .npy files, searched through
    :class:`madda_rs.KnnIndex`), with the vote share, centre distance and familiarity of each label.

    `kind` is 'knn' (M-ADDA: a vote of the k nearest source embeddings) or 'classifier' (ADDA:
    the model outputs one logit per class; vote_share is then the softmax probability)."""

    def __init__(self, source_embeddings: np.ndarray, source_labels: np.ndarray, class_names: Sequence[str],
                 k: int, kind: str = "knn", threads: Optional[int] = None) -> None:
        import madda_rs

        self.emb, self.labels = source_embeddings, np.asarray(source_labels, dtype=np.int64)
        self.names, self.k, self.kind, self.threads = list(class_names), k, kind, threads
        self.index = madda_rs.KnnIndex(self.emb.shape[1])
        self.index.add(self.emb, self.labels)
        classes = np.unique(self.labels)
        emb64 = np.asarray(self.emb, dtype=np.float64)
        self.centres = np.stack([emb64[self.labels == c].mean(0) for c in classes])
        own = ((emb64 - self.centres[np.searchsorted(classes, self.labels)]) ** 2).sum(1)
        self.limits = np.array([np.quantile(own[self.labels == c], UNFAMILIAR_QUANTILE) for c in classes])
        self.classes = classes

    def __call__(self, outputs: np.ndarray) -> Dict[str, np.ndarray]:
        """Per row of `outputs` (the model's embeddings or logits): label (class index), its name,
        vote_share, centre_distance and unfamiliar."""
        if self.kind == "classifier":
            z = outputs - outputs.max(1, keepdims=True)
            p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
            label = self.classes[outputs.argmax(1)]
            share = p.max(1)
        else:
            _, idx = self.index.search(outputs, self.k, threads=self.threads)
            votes = self.labels[idx]
            label = _vote(votes)
            share = (votes == label[:, None]).mean(1)
        row = np.searchsorted(self.classes, label)  # class_names follow the sorted source labels
        distance = ((outputs.astype(np.float64) - self.centres[row]) ** 2).sum(1)
        return {"label_index": label, "label": np.asarray([self.names[i] for i in row]),
                "vote_share": share.astype(np.float64), "centre_distance": distance,
                "unfamiliar": distance > self.limits[row]}


def _vote(votes: np.ndarray) -> np.ndarray:
    import madda_rs

    return madda_rs.knn_vote(votes)  # the most frequent label; a tie goes to the smallest


def embed_batches(model: Callable[[Any], Any], images: np.ndarray, batch_size: Optional[int] = None) -> np.ndarray:
    """The model's outputs, without gradients, batch by batch (the model in eval mode, weights
    channels-last: the batches and layout training scores with, so the numbers agree)."""
    import torch

    # 512 images of 28x28 a batch (training's scoring batches), as many pixels a batch when larger
    batch_size = batch_size or max(1, min(512, 512 * 28 * 28 // max(1, images.shape[-1] * images.shape[-2])))
    outs = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            outs.append(model(to_model_input(images[i : i + batch_size])).float().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def write_predictions(path: Path, id_name: str, ids: Sequence[Any], result: Dict[str, np.ndarray]) -> Path:
    """CSV, or JSON lines (.jsonl), or NumPy arrays (.npz), by the suffix of `path`."""
    path = Path(path)
    if path.suffix == ".npz":
        np.savez(path, **{id_name: np.asarray(ids)}, **{k: result[k] for k in FIELDS})
        return path
    rows = zip(ids, result["label"].tolist(), result["vote_share"].tolist(), result["centre_distance"].tolist(),
               result["unfamiliar"].tolist())
    with open(path, "w", newline="") as f:
        if path.suffix == ".jsonl":
            for row in rows:
                f.write(json.dumps(dict(zip((id_name, *FIELDS), row))) + "\n")
        else:
            writer = csv.writer(f)
            writer.writerow((id_name, *FIELDS))
            writer.writerows(rows)
    return path


# --- predict.py of an exported folder -------------------------------------------------------------


def main(argv: Optional[List[str]] = None) -> int:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description="Label images with an exported madda_rs run.")
    parser.add_argument("inputs", nargs="+", help="image files, folders (any depth) or .npz files")
    parser.add_argument("--out", required=True, help="output file: .csv, .jsonl or .npz")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    args = parser.parse_args(argv)
    try:
        import torch

        run = json.loads((here / "run.json").read_text())
        if args.threads:
            torch.set_num_threads(args.threads)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, and enough here
            model = torch.jit.load(str(here / "encoder.pt"), map_location="cpu").eval()
        vote = NeighbourVote(np.load(here / "source_embeddings.npy", mmap_mode="r"),
                             np.load(here / "source_labels.npy"), run["class_names"], run["k"], run["predictor"],
                             args.threads)
        images, id_name, ids = load_inputs(args.inputs, tuple(run["shape"]), args.threads)
        write_predictions(Path(args.out), id_name, ids, vote(embed_batches(model, images)))
    except (ValueError, OSError) as exc:
        print(f"predict.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
