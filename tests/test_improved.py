"""The 'improved' preset's pieces (augmentation, labelled magnet, information maximisation, mean
teacher, target clustering, guard) checked one by one, and short runs on generated digits."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from madda_rs.config import TrainConfig
from madda_rs.data.domains import load_npz
from madda_rs.losses import information_maximisation_loss, labelled_magnet_loss
from madda_rs.methods import check_config
from madda_rs.methods.common import augment, guard_verdict
from madda_rs.training import resume, train


def _config(data_dir, **kw):
    base = dict(src="mnist", tgt="usps", preset="improved", epochs_source=2, epochs_target=2, data_dir=data_dir,
                download=False, device="cpu", eval_every=1)
    base.update(kw)
    return TrainConfig(**base)


def test_augment_warps_each_image_its_own_way_from_its_generator():
    x = torch.rand(6, 1, 28, 28) * 2 - 1
    a = augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, augment(x, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, augment(x, torch.Generator().manual_seed(2)))
    same = torch.stack([x[0]] * 6)
    warped = augment(same, torch.Generator().manual_seed(3))
    assert all(not torch.allclose(warped[0], warped[i]) for i in range(1, 6))  # one warp per image
    # a blank (background) image stays blank: border padding brings in no foreground
    blank = torch.full((2, 1, 28, 28), -1.0)
    assert torch.allclose(augment(blank, torch.Generator().manual_seed(4)), blank)


def test_augment_keeps_a_digit_recognisably_in_place():
    x = torch.full((1, 1, 28, 28), -1.0)
    x[0, 0, 10:18, 10:18] = 1.0
    for seed in range(20):
        w = augment(x, torch.Generator().manual_seed(seed))
        mass = (w[0, 0] + 1).clamp_min(0)
        ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
        cy, cx = (mass * ys).sum() / mass.sum(), (mass * xs).sum() / mass.sum()
        assert abs(cy - 13.5) < 3.5 and abs(cx - 13.5) < 3.5  # shifted by at most ~2 px (plus rounding)
        assert 0.7 < mass.sum() / 128 < 1.3  # scaled by 0.9-1.1 per side


def test_labelled_magnet_pulls_kept_rows_to_their_given_centre():
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    emb = torch.tensor([[1.0, 0.0], [9.0, 0.0], [5.0, 5.0]], requires_grad=True)
    assign, keep = torch.tensor([1, 1, 0]), torch.tensor([True, True, False])
    loss = labelled_magnet_loss(emb, centers, assign, keep)
    assert loss.item() == pytest.approx((81 + 1) / 2)  # row 0 goes to centre 1, not its nearest
    loss.backward()
    assert torch.all(emb.grad[2] == 0)  # dropped rows get no pull
    none_kept = labelled_magnet_loss(emb, centers, assign, torch.zeros(3, dtype=torch.bool))
    assert none_kept.item() == 0.0 and none_kept.requires_grad


def test_information_maximisation_prefers_confident_balanced_assignments():
    centers = torch.eye(3) * 10
    balanced = centers.clone()  # one image on each centre
    merged = centers[[0, 0, 0]]  # all three on one centre
    vague = torch.full((3, 3), 10 / 3)  # every image equally far from every centre
    im = {name: information_maximisation_loss(e, centers, spread=1.0).item()
          for name, e in (("balanced", balanced), ("merged", merged), ("vague", vague))}
    assert im["balanced"] == pytest.approx(-np.log(3), abs=1e-4)  # 0 per-image entropy, log 3 over the batch
    assert im["merged"] == pytest.approx(0.0, abs=1e-4)
    assert im["vague"] == pytest.approx(0.0, abs=1e-4)
    assert im["balanced"] < min(im["merged"], im["vague"])


def test_guard_fires_on_merged_classes_only():
    source_only = {"pred_classes": 10, "pred_entropy": 0.98}
    assert guard_verdict(source_only, {"pred_classes": 10, "pred_entropy": 0.95}) is None
    assert "9 classes" in guard_verdict(source_only, {"pred_classes": 9, "pred_entropy": 0.95})
    assert "balance" in guard_verdict(source_only, {"pred_classes": 10, "pred_entropy": 0.80})


def test_improved_settings_are_refused_with_adda_and_checked():
    with pytest.raises(ValueError, match="--method adda has no preset 'improved'; its presets: paper, official"):
        TrainConfig(method="adda", preset="improved")
    with pytest.raises(ValueError, match="--method adda does not read --guard"):
        TrainConfig(method="adda", guard=True)
    with pytest.raises(ValueError, match="--augment belongs to M-ADDA's recipes"):
        check_config(TrainConfig(method="adda", augment=True))
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(preset="improved", ema_decay=1.0)
    with pytest.raises(ValueError, match="im_weight"):
        TrainConfig(preset="improved", im_weight=-1.0)
    # the other presets compute what they did before these settings existed
    for name in ("paper", "official"):
        c = TrainConfig(preset=name)
        assert (c.augment, c.magnet_labels, c.im_weight, c.ema_decay, c.guard) == (False, "nearest", 0.0, 0.0, False)


def test_improved_run_beats_chance_scores_the_teacher_and_resumes_exactly(generated_data_dir, tmp_path):
    # deterministic: the cluster labels and semi-hard negatives are discrete choices, so the last-bit
    # differences of multithreaded sums would otherwise grow into different runs
    # guard off: its fallback (tested below) would make target.pt the source model
    config = _config(generated_data_dir, epochs_target=3, checkpoint_every=1, deterministic=True, guard=False)
    whole = train(config, out_dir=str(tmp_path / "whole"))
    assert whole.target_accuracy > 0.5  # chance is 0.1
    hist = whole.history["target"]
    assert all({"im_loss", "magnet_loss", "magnet_kept", "d_acc"} <= set(h) for h in hist)
    assert all(0 < h["magnet_kept"] <= 1 for h in hist)
    saved = torch.load(tmp_path / "whole" / "checkpoint.pt", map_location="cpu", weights_only=True)
    teacher, student = saved["stages"]["target"]["teacher"], saved["stages"]["target"]["target"]
    assert any(not torch.equal(teacher[k], student[k]) for k in teacher)  # an average, not a copy
    target_pt = torch.load(tmp_path / "whole" / "target.pt", map_location="cpu", weights_only=True)
    assert all(torch.equal(target_pt["state_dict"][k], teacher[k]) for k in teacher)  # the teacher is the output

    # cut after target epoch 1, resume: the same run, teacher included
    cut = train(config.replace(epochs_target=1), out_dir=str(tmp_path / "cut"))
    assert cut.target_accuracy is not None
    ckpt = torch.load(tmp_path / "cut" / "checkpoint.pt", map_location="cpu", weights_only=False)
    ckpt["config"] = config.to_dict()
    torch.save(ckpt, tmp_path / "cut" / "checkpoint.pt")
    (tmp_path / "cut" / "config.json").write_text(json.dumps(config.to_dict()))
    (tmp_path / "cut" / "metrics.json").unlink()
    resumed = resume(str(tmp_path / "cut"))
    for a, b in zip(resumed.history["target"], hist):
        for key in ("im_loss", "magnet_loss", "magnet_kept", "target_accuracy"):
            assert a[key] == b[key], key


def test_guard_falls_back_to_the_source_model_when_adaptation_merges_classes(generated_data_dir, monkeypatch):
    import madda_rs.training as training

    real = training.target_scores
    calls = {"n": 0}

    def merged_after_adaptation(reference, model, data, seed):
        scores = real(reference, model, data, seed)
        calls["n"] += 1
        if calls["n"] > 1:  # the first call scores the source model; later ones the adapted model
            scores.update(pred_classes=1, pred_entropy=0.0, target_accuracy=0.1)
        return scores

    monkeypatch.setattr(training, "target_scores", merged_after_adaptation)
    result = train(_config(generated_data_dir))
    assert result.guard is not None and "1 classes" in result.guard
    assert result.target_accuracy == result.source_only_accuracy
    assert any(w.startswith("guard:") for w in result.warnings)
    off = train(_config(generated_data_dir, guard=False))
    assert off.guard is None and off.target_accuracy == 0.1


def test_the_made_up_domains_script_writes_domains_madda_rs_reads(generated_data_dir, tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "made_up_domains.py"
    subprocess.run([sys.executable, str(script), "--out", str(tmp_path), "--data-dir", generated_data_dir],
                   check=True, capture_output=True)
    negative, slant = load_npz(tmp_path / "mnist-negative.npz"), load_npz(tmp_path / "mnist-slant-thick.npz")
    for train_set, test_set in (negative, slant):
        assert train_set.shape == (1, 28, 28) and test_set is not None
        assert len(train_set) == 4 * len(test_set)
        assert train_set.labels is not None and test_set.labels is not None
    # the negative is the inversion of the same digits: backgrounds turn from dark to bright
    assert negative[0].floats().mean() > 0.5 and slant[0].floats().mean() < -0.5
