"""`madda-rs predict` against the plain pipeline a user would write; writes results/predict.md.

One run folder (a LeNet embedding model, 60,000 source embeddings of 256 dimensions, k = 5) labels
10,000 28 x 28 images: from an .npz (embedding + kNN vote + CSV output), and from a folder of PNG
files (decoding included). The plain pipeline is a torch forward of the same model, then
scikit-learn's KNeighborsClassifier on the same embeddings, then the same CSV. Every
implementation gets 2 threads. The peak memory is that of a whole `madda-rs predict` process.
"""

from __future__ import annotations

import csv
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _bench import QUICK, THREADS, best_time, write_table

N_SRC, N_NEW, D, K = (6_000, 1_000, 256, 5) if QUICK else (60_000, 10_000, 256, 5)
# Images per second from an .npz: a floor against regressions. The goal is 10,000. With the AMX
# bf16 kernel the exact kNN (307 GFLOP) takes about 0.5 s on the 2-core Xeon of docs/speed.md and
# embedding + vote + output reached 13,551/s there (2026-12-07 09:45); with the float32 kernels (no AMX) about 6,500.
MIN_RATE = 5_000
MIN_SPEEDUP = 2.0  # over the plain pipeline


def _digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Digit-like uint8 images: a bright bar whose place is the class, on noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = (rng.random((n, 28, 28)) * 60).astype(np.uint8)
    for i, c in enumerate(labels):
        row = 4 + 2 * c + rng.integers(0, 2)
        images[i, row : row + 2, 5:23] = 255
    return images[:, None], labels


def _make_run(folder: Path) -> None:
    """A run folder as training leaves it (a model, its source embeddings and labels)."""
    from madda_rs.config import TrainConfig
    from madda_rs.models import EmbeddingNet
    from madda_rs.run.folder import RunFolder
    from madda_rs.scores.predictors import embed

    torch.manual_seed(0)
    model = EmbeddingNet(D).eval()
    src, labels = _digits(N_SRC, 0)
    run = RunFolder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    run.save_model("target.pt", model, TrainConfig(k=K), 1)
    run.save_array("source_embeddings.npy", embed(model, torch.from_numpy(src).float() / 127.5 - 1))
    run.save_array("source_labels.npy", labels.astype(np.int64))
    run.write_json("predictor.json", {"predictor": "knn", "k": K, "class_names": [str(c) for c in range(10)],
                                      "shape": [1, 28, 28]})


def _plain(run_dir: Path, npz: Path, out: Path) -> None:
    """torch forward, then scikit-learn's KNeighborsClassifier, then a CSV of the labels."""
    from sklearn.neighbors import KNeighborsClassifier

    from madda_rs.run.folder import load_model

    model = load_model(run_dir / "target.pt").eval()
    images = np.load(npz)["images"]
    with torch.no_grad():
        emb = torch.cat([model(torch.from_numpy(images[i:i + 2048]).float().div(255).mul(2).sub(1))
                         for i in range(0, len(images), 2048)]).numpy()
    knn = KNeighborsClassifier(n_neighbors=K, algorithm="brute", n_jobs=THREADS)
    knn.fit(np.load(run_dir / "source_embeddings.npy"), np.load(run_dir / "source_labels.npy"))
    pred = knn.predict(emb)
    with open(out, "w", newline="") as f:
        csv.writer(f).writerows(enumerate(pred.tolist()))


@pytest.fixture(scope="module")
def setting():
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _make_run(root / "run")
        images, _ = _digits(N_NEW, 1)
        np.savez(root / "new.npz", images=images)
        (root / "png").mkdir()
        for i, img in enumerate(images):
            Image.fromarray(img[0]).save(root / "png" / f"{i:05d}.png")
        yield root


def test_predict_rate_against_the_plain_pipeline(setting):
    from threadpoolctl import threadpool_limits

    from madda_rs.inference.predict import load_run

    torch.set_num_threads(THREADS)
    run = load_run(setting / "run", threads=THREADS)
    out = setting / "out.csv"
    with threadpool_limits(THREADS):
        ours, _, _ = best_time(lambda: run.predict_files([str(setting / "new.npz")], out), 3)
        png, _, _ = best_time(lambda: run.predict_files([str(setting / "png")], out), 2)
        plain, _, _ = best_time(lambda: _plain(setting / "run", setting / "new.npz", setting / "plain.csv"), 3)
    with open(out) as f:  # the same labels as the plain pipeline (exact kNN both; ties to the smallest label)
        run.predict_files([str(setting / "new.npz")], out)
        ours_labels = [row["label"] for row in csv.DictReader(f)]
    with open(setting / "plain.csv") as f:
        plain_labels = [row[1] for row in csv.reader(f)]
    agree = np.mean(np.array(ours_labels) == np.array(plain_labels))
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run([sys.executable, "-m", "madda_rs", "predict", str(setting / "run"), str(setting / "new.npz"),
                           "--out", str(setting / "sub.csv"), "--threads", str(THREADS)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    peak_mb = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before) / 1024
    rows = [
        ("madda-rs predict, .npz", f"{ours:.3f} s", f"{N_NEW / ours:,.0f}", "1.00"),
        ("madda-rs predict, PNG folder (decoding included)", f"{png:.3f} s", f"{N_NEW / png:,.0f}",
         f"{png / ours:.2f}"),
        ("torch forward + scikit-learn KNeighborsClassifier", f"{plain:.3f} s", f"{N_NEW / plain:,.0f}",
         f"{plain / ours:.2f}"),
    ]
    notes = [f"{N_NEW:,} images of 28 x 28 against {N_SRC:,} source embeddings of {D} dimensions, k = {K}; "
             f"best of 3 (PNG: 2) calls; the labels agree on {agree:.1%} of the images.",
             f"Peak memory of a whole `madda-rs predict` process on the .npz (torch included): {peak_mb:,.0f} MB.",
             f"The exact kNN alone is {2 * N_NEW * N_SRC * D / 1e9:.0f} GFLOP; see docs/speed.md for its rate."]
    write_table("predict", "Predicting new images: madda-rs predict against the plain pipeline",
                ["pipeline", "seconds", "images / s", "time / madda-rs (.npz)"], rows, notes,
                setting=f"{THREADS} threads each")
    assert agree == 1.0
    if not QUICK:
        assert plain / ours >= MIN_SPEEDUP, f"{plain / ours:.2f}x the plain pipeline, below {MIN_SPEEDUP}x"
        assert N_NEW / ours >= MIN_RATE, f"{N_NEW / ours:,.0f} images/s, below {MIN_RATE:,}"
