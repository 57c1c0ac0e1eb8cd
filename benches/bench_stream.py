"""Streaming folders of 224x224 colour images: does the loader keep up with the model, and does a
run over a folder larger than its memory budget stay small? Writes results/stream.md.

* the loader alone: a streamed folder's batches of 32, decoded by 2 worker processes, images/s;
* a ResNet-18 training step at batch 32 on this CPU (forward, backward, Adam), images/s;
* the peak memory (PSS, summed over the training process and its loader workers) of whole
  streamed runs: ``madda-rs train --stream-above-mb 0`` over 20,000 images (16,000 source, 4,000
  target) with a small backbone, whose cost is the data path, and over 400 images with
  ``--backbone resnet18 --augment``, whose cost is the network. A run's memory is the data path's
  plus the network's; neither grows with the folder.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from madda_rs.run.precision import supported

from _bench import QUICK, THREADS, write_table

N_SOURCE, N_TARGET = (1_600, 400) if QUICK else (16_000, 4_000)
SIZE, BATCH, WORKERS = 224, 32, 2
MAX_PEAK_GB = 2.0
TINY = '''
from torch import nn
from madda_rs.backbones import Backbone, register_backbone


@register_backbone("tiny")
class Tiny(Backbone):
    feature_dim, channels, min_size, augmentation = 32, None, 8, "photo"

    def __init__(self, in_shape):
        super().__init__(in_shape)
        self.conv = nn.Sequential(nn.Conv2d(in_shape[0], 32, 5, stride=4), nn.ReLU())
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def trunk(self, x):
        return self.conv(x)

    def neck(self, t):
        return self.pool(t)
'''


def _photo(c: int, rng: np.random.Generator) -> Image.Image:
    """A smooth colour image of class `c` (JPEG-friendly, as photographs are): a gradient in a
    class hue and a bright bar at a class place."""
    ramp = np.linspace(0, 1, SIZE, dtype=np.float32)
    hue = np.array([(37 * c) % 256, (91 * c + 60) % 256, (173 * c + 120) % 256], np.float32)
    img = hue * (0.4 + 0.4 * ramp[:, None, None]) + rng.random(3) * 60
    row = 10 + c * (SIZE - 40) // 10
    img = np.broadcast_to(img, (SIZE, SIZE, 3)).copy()
    img[row : row + SIZE // 12, SIZE // 8 : -SIZE // 8] = 255
    return Image.fromarray(img.clip(0, 255).astype(np.uint8), "RGB")


def _tree(root: Path, n_source: int, n_target: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n_source):
        c = i % 10
        (root / "src" / f"c{c}").mkdir(parents=True, exist_ok=True)
        _photo(c, rng).save(root / "src" / f"c{c}" / f"{i:05d}.jpg", quality=90)
    (root / "tgt").mkdir(parents=True, exist_ok=True)
    for i in range(n_target):
        _photo(i % 10, rng).save(root / "tgt" / f"{i:05d}.jpg", quality=90)


def _tree_pss(pid: int) -> int:
    """Proportional set size in bytes of `pid` and every descendant (shared pages counted once)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def _peak_run(argv: list[str]) -> tuple[float, float]:
    """(peak PSS in GB of the process tree, wall seconds) of a madda-rs command."""
    began = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "madda_rs.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    peak = [0]

    def watch() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_pss(proc.pid))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch)
    watcher.start()
    out, err = proc.communicate()
    watcher.join()
    assert proc.returncode == 0, err[-2000:]
    return peak[0] / 2**30, time.perf_counter() - began


def test_the_loader_keeps_up_and_a_streamed_run_stays_small(tmp_path):
    from madda_rs.data.folders import list_folder
    from madda_rs.data.images import FileImageSet
    from madda_rs.models import EmbeddingNet

    torch.set_num_threads(THREADS)
    began = time.perf_counter()
    _tree(tmp_path, N_SOURCE, N_TARGET)
    made = time.perf_counter() - began

    _, files, labels = list_folder(tmp_path / "src", labelled=True)
    streamed = FileImageSet.of(files, (3, SIZE, SIZE), labels, "src", WORKERS)
    rows = torch.randperm(len(files), generator=torch.Generator().manual_seed(0))[: 64 * BATCH].split(BATCH)
    next(iter(streamed.stream(rows[:1], torch.device("cpu"))))  # starts the workers' fork server, once a process
    began = time.perf_counter()
    seen = sum(len(x) for x in streamed.stream(rows, torch.device("cpu")))
    loader_rate = seen / (time.perf_counter() - began)

    model = EmbeddingNet(256, (3, SIZE, SIZE), "resnet18").train()
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)
    x = torch.rand(BATCH, 3, SIZE, SIZE) * 2 - 1

    def step() -> None:
        optimizer.zero_grad()
        model(x).pow(2).mean().backward()
        optimizer.step()

    step()  # warm-up
    steps = 2 if QUICK else 5
    began = time.perf_counter()
    for _ in range(steps):
        step()
    step_rate = steps * BATCH / (time.perf_counter() - began)

    (tmp_path / "tiny.py").write_text(TINY)
    common = ["--tgt", str(tmp_path / "tgt"), "--stream-above-mb", "0", "--workers", str(WORKERS), "--threads",
              str(THREADS), "--device", "cpu", "--epochs-source", "1", "--epochs-target", "1", "--batch-size",
              str(BATCH), "--target-batch-size", str(BATCH), "--quiet"]
    tiny_peak, tiny_wall = _peak_run(["train", "--src", str(tmp_path / "src"), "--backbone",
                                      f"{tmp_path / 'tiny.py'}:tiny", "--out", str(tmp_path / "run-tiny"), *common])
    small = tmp_path / "small"
    for c in range(10):  # 300 source images of the same folder, 100 target: ResNet-18's memory, not the data's
        (small / "src" / f"c{c}").mkdir(parents=True)
        for f in sorted((tmp_path / "src" / f"c{c}").iterdir())[:30]:
            (small / "src" / f"c{c}" / f.name).symlink_to(f)
    resnet_common = [a if a != str(tmp_path / "tgt") else str(small / "tgt") for a in common]
    (small / "tgt").mkdir()
    for f in sorted((tmp_path / "tgt").iterdir())[:100]:
        (small / "tgt" / f.name).symlink_to(f)
    resnet_peak, resnet_wall = _peak_run(["train", "--src", str(small / "src"), "--backbone", "resnet18", "--augment",
                                          "--precision", "fp32", "--out", str(tmp_path / "run-resnet18"),
                                          *resnet_common])
    # bf16 autocast keeps the activations saved for the backward pass in half the bytes
    bf16 = "bf16" in supported(torch.device("cpu"))
    if bf16:
        bf16_peak, bf16_wall = _peak_run(["train", "--src", str(small / "src"), "--backbone", "resnet18", "--augment",
                                          "--precision", "bf16", "--out", str(tmp_path / "run-resnet18-bf16"),
                                          *resnet_common])
    # recomputing the trunk's activations in the backward pass keeps only each block's input
    lean_precision = "bf16" if bf16 else "fp32"
    lean_peak, lean_wall = _peak_run(["train", "--src", str(small / "src"), "--backbone", "resnet18", "--augment",
                                      "--precision", lean_precision, "--recompute-activations",
                                      "--out", str(tmp_path / "run-resnet18-lean"), *resnet_common])

    decoded_gb = (N_SOURCE + N_TARGET) * 3 * SIZE * SIZE / 2**30
    write_table(
        "stream", "Streaming 224x224 colour folders: the loader against ResNet-18, and peak memory",
        ["measure", "value"],
        [("loader alone: batches of 32, 2 workers (decode JPEG, to tensor)", f"{loader_rate:,.0f} images/s"),
         ("ResNet-18 training step, batch 32 (forward, backward, Adam)", f"{step_rate:,.1f} images/s"),
         ("loader / training step", f"{loader_rate / step_rate:,.1f}x"),
         (f"streamed run, small backbone, {N_SOURCE + N_TARGET:,} images, 1 + 1 epochs: peak PSS",
          f"{tiny_peak:.2f} GB ({tiny_wall:.0f} s; decoded, the images would take {decoded_gb:.1f} GB)"),
         ("streamed run, resnet18 --augment --precision fp32, 400 images, 1 + 1 epochs: peak PSS",
          f"{resnet_peak:.2f} GB ({resnet_wall:.0f} s)"),
         ("the same, --precision bf16: peak PSS",
          f"{bf16_peak:.2f} GB ({bf16_wall:.0f} s)" if bf16 else "not run: this CPU has no bf16"),
         (f"the same, --precision {lean_precision} --recompute-activations: peak PSS",
          f"{lean_peak:.2f} GB ({lean_wall:.0f} s)")],
        [f"Images are JPEG (quality 90), generated in {made:.0f} s. Peak memory is the proportional set size of the "
         "training process and its loader workers together, sampled every 0.2 s. Both runs stream "
         "(--stream-above-mb 0); a folder's memory does not grow with its number of images, so a "
         "ResNet-18 run over the 20,000 images would need the ResNet-18 run's peak (its network and batches) "
         "plus the data path's, which the small-backbone run measures."],
        setting=f"{THREADS} threads, torch {torch.__version__}")
    if not QUICK:  # the data path's promises; ResNet-18's own peak (its activations at batch 32) is reported
        assert loader_rate > step_rate
        assert tiny_peak < MAX_PEAK_GB
