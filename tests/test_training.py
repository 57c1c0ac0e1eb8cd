"""Short runs of both stages on small generated digits: files, results, and every setting checked
where it takes effect (from the command line through the config to the code that uses it)."""

import json
from collections import defaultdict

import numpy as np
import pytest
import torch

import madda_rs
import madda_rs.methods.common as common
import madda_rs.methods.madda as madda_stage
from madda_rs.cli import main
from madda_rs.config import TrainConfig
from madda_rs.run.folder import load_model
from madda_rs.scores.evaluate import evaluate_run
from madda_rs.training import train


def _config(data_dir, **kw):
    base = dict(src="mnist", tgt="usps", epochs_source=2, epochs_target=2, data_dir=data_dir, download=False,
                device="cpu", eval_every=1)
    base.update(kw)
    return TrainConfig(**base)


def _cli(data_dir, out, *flags):
    return main(["train", "--src", "mnist", "--tgt", "usps", "--data-dir", data_dir, "--no-download", "--device",
                 "cpu", "--out", str(out), "--quiet", *flags])


@pytest.mark.parametrize("preset", ["paper", "official"])
def test_two_epoch_run_writes_everything_and_beats_chance(generated_data_dir, tmp_path, preset):
    result = train(_config(generated_data_dir, preset=preset), out_dir=str(tmp_path))
    for name in ("config.json", "metrics.json", "checkpoint.pt", "progress.json", "source.pt", "target.pt"):
        assert (tmp_path / name).is_file(), name
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert len(metrics["history"]["source"]) == 2 and len(metrics["history"]["target"]) == 2
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["preset"] == preset and config["negatives"] == TrainConfig(preset=preset).negatives
    assert config["overridden"] == ["epochs_source", "epochs_target"]
    assert result.source_accuracy > 0.5 and result.target_accuracy > 0.5  # chance is 0.1
    assert metrics["target_accuracy"] == result.target_accuracy
    assert {"pred_classes", "pred_largest_class_share", "pred_entropy", "snd", "knn_center_agreement",
            "source_test_accuracy", "d_acc"} <= set(result.label_free)
    assert "target_accuracy" not in result.label_free
    counts = np.array(metrics["confusion"])  # rows: true class, columns: predicted
    assert counts.shape == (len(metrics["classes"]),) * 2
    assert np.trace(counts) / counts.sum() == pytest.approx(result.target_accuracy)
    ckpt = torch.load(tmp_path / "target.pt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["config"]["preset"] == preset
    rescored = evaluate_run(str(tmp_path), device="cpu")
    assert rescored["target_accuracy"] == pytest.approx(result.target_accuracy)
    assert isinstance(load_model(tmp_path / "source.pt"), torch.nn.Module)


class Spy:
    """Records what the training code was actually called with."""

    def __init__(self, monkeypatch):
        self.calls = defaultdict(list)
        calls = self.calls

        def wrap(module, name, record):
            real = getattr(module, name)

            def spy(*args, **kwargs):
                out = real(*args, **kwargs)
                calls[name].append(record(args, kwargs, out))
                return out

            monkeypatch.setattr(module, name, spy)

        wrap(madda_rs.native, "triplets", lambda a, kw, out: (kw["negatives"], kw["margin"]))
        wrap(madda_rs.native, "knn_predict", lambda a, kw, out: a[3])
        wrap(madda_stage, "triplet_loss", lambda a, kw, out: a[2])
        for module in (common, madda_stage):
            wrap(module, "epoch_batches", lambda a, kw, out, m=module: (m.__name__.split(".")[-1], a[1]))
            wrap(module, "zero_grad", lambda a, kw, out: not a[1].zero_grad_momentum)
        wrap(common, "adam", lambda a, kw, out: (out.param_groups[0]["lr"], out.param_groups[0]["betas"]))
        wrap(madda_stage, "kmeans_centers", lambda a, kw, out: a[1])
        wrap(common, "discriminator_loss", lambda a, kw, out: None)
        wrap(madda_stage, "center_magnet_loss", lambda a, kw, out: None)
        real_detached = madda_rs.models.EmbeddingNet.embed_detached_trunk

        def detached(model, x):
            calls["embed_detached_trunk"].append(None)
            return real_detached(model, x)

        monkeypatch.setattr(madda_rs.models.EmbeddingNet, "embed_detached_trunk", detached)


def test_every_flag_reaches_the_code(generated_data_dir, tmp_path, monkeypatch):
    spy = Spy(monkeypatch)
    flags = ["--preset", "official", "--epochs-source", "1", "--epochs-target", "3", "--batch-size", "40",
             "--target-batch-size", "30", "--k", "3", "--lr", "2e-4", "--lr-discriminator", "5e-4",
             "--betas", "0.6", "0.95", "--margin", "0.5", "--embedding-dim", "32", "--negatives", "semihard",
             "--centers", "class_means", "--magnet-scope", "model", "--adversarial-passes", "2",
             "--no-zero-grad-momentum", "--eval-every", "2", "--checkpoint-every", "2", "--threads", "1"]
    assert _cli(generated_data_dir, tmp_path / "run", *flags) == 0
    c = spy.calls
    assert set(c["triplets"]) == {("semihard", 0.5)} and set(c["triplet_loss"]) == {0.5}
    assert set(c["knn_predict"]) == {3}
    # source batches and the adversarial pairs come from the shared stages, the magnet's from M-ADDA's
    assert set(c["epoch_batches"]) == {("common", 40), ("common", 30), ("madda", 30)}
    assert c["adam"] == [(2e-4, (0.6, 0.95)), (2e-4, (0.6, 0.95)), (5e-4, (0.6, 0.95))]  # source, target, D
    assert set(c["zero_grad"]) == {True}  # set_to_none: the momentum quirk is off
    assert c["kmeans_centers"] == [] and c["embed_detached_trunk"] == []
    assert len(c["discriminator_loss"]) == 3 * 2 * min(600 // 40, 600 // 30)  # epochs x passes x batches
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    hist = metrics["history"]["target"]
    assert [("target_accuracy" in h) for h in hist] == [False, True, True]  # every 2 epochs, and the last
    assert len(metrics["history"]["source"]) == 1 and metrics["threads"] == 1
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["preset"] == "official" and "negatives" in config["overridden"] and "k" in config["overridden"]
    assert load_model(tmp_path / "run" / "target.pt").head[1].out_features == 32


def test_official_preset_values_reach_the_code(generated_data_dir, tmp_path, monkeypatch):
    spy = Spy(monkeypatch)
    assert _cli(generated_data_dir, tmp_path / "run", "--preset", "official", "--epochs-source", "1",
                "--epochs-target", "2") == 0
    c = spy.calls
    assert set(c["triplets"]) == {("violating", 1.0)} and set(c["knn_predict"]) == {2}
    assert set(c["zero_grad"]) == {False}  # zeroed, not None
    assert len(c["kmeans_centers"]) == 2 and set(c["kmeans_centers"]) == {10}
    assert len(c["embed_detached_trunk"]) == len(c["center_magnet_loss"]) > 0
    assert len(c["discriminator_loss"]) == 2 * 3 * min(600 // 64, 600 // 50)  # epochs x passes x batches
    assert set(c["epoch_batches"]) == {("common", 64), ("common", 50), ("madda", 50)}


def test_paper_preset_values_reach_the_code(generated_data_dir, tmp_path, monkeypatch):
    spy = Spy(monkeypatch)
    assert _cli(generated_data_dir, tmp_path / "run", "--epochs-source", "1", "--epochs-target", "1") == 0
    c = spy.calls
    assert set(c["triplets"]) == {("random", 1.0)} and set(c["triplet_loss"]) == {1.0}
    assert c["kmeans_centers"] == [] and c["embed_detached_trunk"] == []
    assert len(c["discriminator_loss"]) == min(600 // 64, 600 // 50)
    assert c["adam"] == [(1e-4, (0.5, 0.9))] * 3


def test_a_softmax_head_trains_beside_the_triplets_and_is_dropped_after_stage_1(generated_data_dir, tmp_path,
                                                                                monkeypatch):
    spy = Spy(monkeypatch)
    assert _cli(generated_data_dir, tmp_path / "plain", "--epochs-source", "2", "--epochs-target", "1") == 0
    assert _cli(generated_data_dir, tmp_path / "softmax", "--epochs-source", "2", "--epochs-target", "1",
                "--source-ce-weight", "1", "--embedding-dim", "32") == 0
    plain, softmax = (json.loads((tmp_path / run / "metrics.json").read_text())["history"]["source"]
                      for run in ("plain", "softmax"))
    assert "ce_loss" not in plain[0]
    assert softmax[1]["ce_loss"] < softmax[0]["ce_loss"] and softmax[1]["train_accuracy"] > 0.2  # chance: 0.1
    assert len(spy.calls["triplet_loss"]) > 0  # the triplet loss still trains
    # the head trains in the source stage's one optimiser, and no model saved keeps it
    assert len(spy.calls["adam"]) == 2 * 3
    for name in ("source.pt", "target.pt"):
        assert load_model(tmp_path / "softmax" / name).head[1].out_features == 32
    with pytest.raises(SystemExit):
        _cli(generated_data_dir, tmp_path / "bad", "--source-ce-weight", "-1")


def test_the_source_magnet_pulls_labelled_source_images_through_the_target_model(generated_data_dir, tmp_path,
                                                                                 monkeypatch, capsys):
    pulled = []
    real = madda_stage.labelled_magnet_loss

    def spy(emb, centers, assign, keep):
        out = real(emb, centers, assign, keep)
        nearest = torch.cdist(emb.detach(), centers).argmin(1)
        pulled.append((len(emb), bool(keep.all()), float((nearest == assign).float().mean())))
        return out

    monkeypatch.setattr(madda_stage, "labelled_magnet_loss", spy)
    # adversarial only plus the source magnet: the target model's only pull is on source images
    assert _cli(generated_data_dir, tmp_path / "run", "--epochs-source", "1", "--epochs-target", "2", "--no-magnet",
                "--source-magnet-weight", "1") == 0
    hist = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]["target"]
    assert all("source_magnet_loss" in h and "magnet_loss" not in h for h in hist)
    # one source batch (64 images, every one kept) beside each of the 600 // 50 target batches
    assert [(n, kept) for n, kept, _ in pulled] == [(64, True)] * 2 * (600 // 50)
    # each image is pulled to its own class's centre: the first batch goes through the target model as
    # initialised, the source model, whose embedding of a source image lies nearest its class centre
    assert pulled[0][2] > 0.8, pulled[0]
    with pytest.raises(SystemExit):
        _cli(generated_data_dir, tmp_path / "bad", "--source-magnet-weight", "1", "--centers", "kmeans")
    assert "--source-magnet-weight" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["madda", "adda"])
def test_stage_2_takes_its_own_learning_rate_when_given_one(generated_data_dir, tmp_path, monkeypatch, method):
    spy = Spy(monkeypatch)
    assert _cli(generated_data_dir, tmp_path / "run", "--method", method, "--epochs-source", "1",
                "--epochs-target", "1", "--lr", "2e-4", "--lr-target", "3e-5") == 0
    assert [lr for lr, _ in spy.calls["adam"]] == [2e-4, 3e-5, 1e-4]  # source, target, discriminator
    with pytest.raises(SystemExit):
        _cli(generated_data_dir, tmp_path / "bad", "--lr-target", "0")


def test_source_only_and_ablations_from_the_command_line(generated_data_dir, tmp_path):
    def run(name, *flags):
        assert _cli(generated_data_dir, tmp_path / name, "--epochs-source", "1", "--epochs-target", "1", *flags) == 0
        return json.loads((tmp_path / name / "metrics.json").read_text())

    m = run("source-only", "--source-only")
    assert m["history"]["target"] == [] and m["target_accuracy"] == m["source_only_accuracy"]
    m = run("adv", "--no-magnet")
    assert "magnet_loss" not in m["history"]["target"][0] and "d_acc" in m["history"]["target"][0]
    m = run("magnet", "--no-adversarial")
    assert "d_acc" not in m["history"]["target"][0] and "magnet_loss" in m["history"]["target"][0]


def test_the_final_epoch_is_reported_not_the_best(generated_data_dir, monkeypatch):
    import madda_rs.training as training

    scores = iter([0.5, 0.8, 0.3])  # source-only, then target epochs 1 and 2: the best is neither first nor last
    real = training.target_scores

    def fake(reference, model, data, seed):
        out = real(reference, model, data, seed)
        out["target_accuracy"] = next(scores)
        return out

    monkeypatch.setattr(training, "target_scores", fake)
    result = train(_config(generated_data_dir, epochs_source=1))
    assert result.source_only_accuracy == 0.5 and result.target_accuracy == 0.3


def test_seeds_change_the_run(generated_data_dir):
    a = train(_config(generated_data_dir, epochs_source=1, epochs_target=0, deterministic=True))
    b = train(_config(generated_data_dir, epochs_source=1, epochs_target=0, deterministic=True, seed=1))
    assert a.history["source"][0]["loss"] != b.history["source"][0]["loss"]


def test_discriminator_learning_rate_must_be_positive(generated_data_dir):
    with pytest.raises(ValueError, match="lr_discriminator"):
        _config(generated_data_dir, lr_discriminator=-1.0)


def test_cli_train_and_eval(generated_data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--src", "usps", "--tgt", "mnist", "--epochs-source", "1", "--epochs-target", "1",
                 "--data-dir", generated_data_dir, "--no-download", "--out", str(out), "--quiet",
                 "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("target accuracy (usps -> mnist):")
    assert main(["eval", "--run", str(out), "--device", "cpu", "--k", "1"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("target accuracy:")


def test_report_summarises_runs(generated_data_dir, tmp_path, capsys):
    for seed in (0, 1):
        assert _cli(generated_data_dir, tmp_path / f"s{seed}", "--epochs-source", "1", "--epochs-target", "1",
                    "--seed", str(seed)) == 0
    capsys.readouterr()
    assert main(["report", str(tmp_path / "s0"), str(tmp_path / "s1")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 3 and "| 0,1 |" in table[2] and "±" in table[2]
    assert main(["report", "--by-epoch", str(tmp_path / "s0")]) == 0
    assert capsys.readouterr().out.splitlines()[2].startswith("| 1 |")


def test_import_does_not_pull_torch():
    import subprocess
    import sys

    code = "import sys, madda_rs; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_version_is_the_packages():
    from importlib.metadata import version

    assert madda_rs.__version__ == version("madda-rs")


def test_adda_is_a_method_of_the_same_framework(generated_data_dir, tmp_path, monkeypatch):
    spy = Spy(monkeypatch)
    assert _cli(generated_data_dir, tmp_path / "run", "--method", "adda", "--epochs-source", "2",
                "--epochs-target", "2") == 0
    c = spy.calls
    assert c["triplets"] == [] and c["center_magnet_loss"] == []  # softmax, no magnet
    assert len(c["discriminator_loss"]) == 2 * min(600 // 64, 600 // 50)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # no kNN vote predicts: the only ones are the reverse validator's, one per scored model
    # (the source model, then each evaluation of the target stage)
    scored = [h for h in metrics["history"]["target"] if "reverse_accuracy" in h]
    assert len(c["knn_predict"]) == 1 + len(scored)
    assert metrics["source_accuracy"] > 0.5 and metrics["target_accuracy"] > 0.2  # chance is 0.1
    assert "train_accuracy" in metrics["history"]["source"][0]
    assert load_model(tmp_path / "run" / "target.pt").head[1].out_features == 10  # one logit per class
    rescored = evaluate_run(str(tmp_path / "run"), device="cpu")
    assert rescored["target_accuracy"] == pytest.approx(metrics["target_accuracy"])
