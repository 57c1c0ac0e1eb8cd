"""torchrun with two CPU processes (gloo) on a tiny run: both ranks finish, rank 0 alone writes
one run folder, and the result beats chance."""

import json
import subprocess
import sys

import numpy as np
import torch

import madda_rs
from madda_rs.data.images import ImageSet
from madda_rs.models import EmbeddingNet
from madda_rs.run.processes import Parallel
from madda_rs.scores.predictors import KnnPredictor, embed

from digits import make_data_dir


def test_two_gloo_processes_train_one_run(tmp_path):
    data = make_data_dir(tmp_path / "data", n_train=400, n_test=200)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "madda_rs",
           "train", "--src", "mnist", "--tgt", "usps", "--data-dir", str(data), "--no-download", "--device", "cpu",
           "--epochs-source", "2", "--epochs-target", "2", "--out", str(out), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("target accuracy")]
    assert len(lines) == 1  # rank 0 alone prints
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "run"]  # one run folder
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["target_accuracy"] > 0.3 and metrics["source_accuracy"] > 0.5  # chance is 0.1
    assert metrics["threads"] == 1 and metrics["processes"] == 2  # two processes share the two cores
    assert len(metrics["history"]["target"]) == 2


LEAVE_AND_LIST_THREADS = """
import os, sys
from pathlib import Path
from madda_rs.config import TrainConfig
from madda_rs.run.processes import Parallel
from madda_rs.training import train

config = TrainConfig(src="mnist", tgt="usps", data_dir=sys.argv[1], download=False, device="cpu", epochs_source=1,
                     epochs_target=1, deterministic=True)
train(config, out_dir=sys.argv[2])
Parallel.shutdown()
names = sorted(Path(task, "comm").read_text().strip() for task in Path("/proc/self/task").iterdir())
# a file per rank: the ranks' stdout share one pipe under torchrun, and their lines can interleave
Path(sys.argv[3], "threads-" + os.environ["RANK"]).write_text(",".join(names))
"""


def test_leaving_the_process_group_joins_gloos_threads_before_interpreter_shutdown(tmp_path):
    """The cause of a rank aborting after a finished run ("terminate called without an active
    exception"): a process group kept alive past destroy_process_group (by torch modules imported
    after joining it) keeps gloo's worker threads running into interpreter shutdown."""
    data = make_data_dir(tmp_path / "data", n_train=200, n_test=100)
    script = tmp_path / "leave.py"
    script.write_text(LEAVE_AND_LIST_THREADS)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(data), str(tmp_path / "run"), str(tmp_path)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    threads = [(tmp_path / f"threads-{rank}").read_text() for rank in (0, 1)]
    assert all("python" in t and "gloo" not in t for t in threads), threads  # gloo_tcp_loop, pt_gloo_runloop


def test_two_processes_take_the_single_process_gradient_steps_in_stage_2(tmp_path):
    """From one (untrained) source model, a 2-process stage 2 equals the 1-process one up to float
    summation order: shards of every batch, share-weighted gradient averages, same batches."""
    data = make_data_dir(tmp_path / "data", n_train=300, n_test=100)
    common = ["train", "--src", "mnist", "--tgt", "usps", "--data-dir", str(data), "--no-download", "--device", "cpu",
              "--epochs-source", "0", "--epochs-target", "2", "--quiet", "--deterministic"]
    one = subprocess.run([sys.executable, "-m", "madda_rs", *common, "--out", str(tmp_path / "one"), "--threads", "1"],
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-4000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                          "madda_rs", *common, "--out", str(tmp_path / "two")], capture_output=True, text=True,
                         timeout=600)
    assert two.returncode == 0, two.stderr[-4000:]
    runs = [json.loads((tmp_path / name / "metrics.json").read_text())["history"]["target"] for name in ("one", "two")]
    for a, b in zip(*runs):
        for key in ("d_loss", "g_loss", "d_acc", "magnet_loss"):
            assert abs(a[key] - b[key]) <= 1e-4 * max(1.0, abs(a[key])), (key, a[key], b[key])


def test_sharded_evaluation_votes_like_one_process():
    """Each rank searches its shard of the source rows; the merged candidates vote exactly as
    knn_predict over all rows (ranks simulated in one process)."""
    torch.manual_seed(0)
    model = EmbeddingNet(8)
    source = ImageSet(torch.rand(103, 1, 28, 28) * 2 - 1, torch.randint(0, 4, (103,)))
    targets = torch.rand(37, 1, 28, 28) * 2 - 1
    for world in (2, 3):
        refs = [KnnPredictor(model, source, 5, 1, Parallel(rank, world)) for rank in range(world)]
        bounds = np.linspace(0, 103, world + 1).astype(int)
        tgt = embed(model, targets)
        everyone = [ref.candidates(bounds[r], bounds[r + 1], tgt) for r, ref in enumerate(refs)]
        for ref in refs:
            ref.parallel.gather = lambda obj: everyone
            expected = madda_rs.knn_predict(ref.emb, ref.labels, tgt, 5)
            assert np.array_equal(ref.predict(model, targets), expected)
