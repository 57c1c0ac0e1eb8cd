"""Reading a folder of 60,000 PNG digits as a source, first (header scan + decode) and again (the
cache); writes results/folders.md. The promise under test: a second run over a large folder starts
in seconds."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from _bench import QUICK, write_table

N = 6_000 if QUICK else 60_000
MAX_CACHED_SECONDS = 5.0


def test_a_second_read_of_a_large_folder_takes_seconds(monkeypatch):
    from madda_rs.config import TrainConfig
    from madda_rs.data import folders
    from madda_rs.data.geometry import resolve_geometry

    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp) / "digits", Path(tmp) / "cache"
        monkeypatch.setenv(folders.CACHE_ENV, str(cache))
        rng = np.random.default_rng(0)
        for i in range(N):
            img = (rng.random((28, 28)) * 60).astype(np.uint8)
            c = i % 10
            img[4 + 2 * c : 6 + 2 * c, 5:23] = 255
            (root / str(c)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / str(c) / f"{i:05d}.png")
        times = []
        for _ in range(2):
            began = time.perf_counter()
            config = resolve_geometry(TrainConfig(src=str(root), tgt="usps"))
            read = folders.read_folder(root, folders.Geometry(config.channels, *config.image_size), labelled=True)
            times.append(time.perf_counter() - began)
        assert read.images.shape == (N, 1, 28, 28)
    write_table("folders", "Reading a folder of PNG digits as a source",
                ["images", "first read (header scan + decode)", "second read (cache)", "first / second"],
                [(f"{N:,}", f"{times[0]:.1f} s", f"{times[1]:.2f} s", f"{times[0] / times[1]:.1f}")],
                ["Both reads list the files and key the cache on every path, size and modification time."])
    if not QUICK:
        assert times[1] < MAX_CACHED_SECONDS
