"""Two-epoch runs of both stages on small data: files, determinism, accuracy above chance."""

import json

import pytest
import torch

from madda_rs.cli import main
from madda_rs.config import TrainConfig
from madda_rs.training import evaluate_run, load_model, load_splits, train, train_source


def _config(data_dir, **kw):
    base = dict(src="mnist", tgt="usps", epochs_source=2, epochs_target=2, data_dir=data_dir, download=False,
                device="cpu", eval_every=1)
    preset = kw.pop("preset", "paper")
    base.update(kw)
    return TrainConfig.from_preset(preset, **base)


@pytest.mark.parametrize("preset", ["paper", "official"])
def test_two_epoch_run_writes_everything_and_beats_chance(generated_data_dir, tmp_path, preset):
    result = train(_config(generated_data_dir, preset=preset), out_dir=str(tmp_path))
    for name in ("config.json", "metrics.json", "source.pt", "target.pt"):
        assert (tmp_path / name).is_file(), name
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("target_accuracy", "source_accuracy", "wall_seconds", "device", "history"):
        assert key in metrics
    assert len(metrics["history"]["source"]) == 2 and len(metrics["history"]["target"]) == 2
    assert json.loads((tmp_path / "config.json").read_text())["preset"] == preset
    assert result.source_accuracy > 0.5 and result.target_accuracy > 0.2  # chance is 0.1
    ckpt = torch.load(tmp_path / "target.pt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["config"]["preset"] == preset
    rescored = evaluate_run(str(tmp_path), device="cpu")
    assert rescored["target_accuracy"] == pytest.approx(result.target_accuracy)
    assert isinstance(load_model(tmp_path / "source.pt"), torch.nn.Module)


def test_same_seed_same_subsets_and_first_epoch_losses(generated_data_dir):
    cfg = _config(generated_data_dir, epochs_source=1)
    dev = torch.device("cpu")
    runs = []
    for _ in range(2):
        torch.manual_seed(123)  # noise that the run's own seeding must override
        splits = load_splits(cfg, dev)
        from madda_rs.training import seed_everything

        seed_everything(cfg.seed)
        _, hist = train_source(cfg, splits.src_train, dev)
        runs.append((splits.src_train.labels, hist[0]["loss"]))
    # equal up to float summation order (oneDNN may pick different kernels on a warm cache)
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == pytest.approx(runs[1][1], rel=1e-5)


def test_source_only_and_ablations(generated_data_dir):
    r = train(_config(generated_data_dir, source_only=True, epochs_source=1))
    assert r.target_accuracy == r.source_only_accuracy and r.history["target"] == []
    r = train(_config(generated_data_dir, magnet=False, epochs_source=1, epochs_target=1))
    assert "magnet_loss" not in r.history["target"][0] and "d_acc" in r.history["target"][0]
    r = train(_config(generated_data_dir, adversarial=False, epochs_source=1, epochs_target=1))
    assert "d_acc" not in r.history["target"][0] and "magnet_loss" in r.history["target"][0]


def test_cli_train_and_eval(generated_data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--src", "usps", "--tgt", "mnist", "--epochs-source", "1", "--epochs-target", "1",
                 "--data-dir", generated_data_dir, "--no-download", "--out", str(out), "--quiet", "--device", "cpu"])
    assert code == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("target accuracy (usps -> mnist):")
    assert main(["eval", "--run", str(out), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("target accuracy:")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--src", "usps", "--tgt", "usps"], "must differ"),
        (["--src", "mnist", "--tgt", "usps", "--k", "0"], "--k"),
        (["--src", "mnist", "--tgt", "svhn"], "--tgt"),
        (["--src", "mnist", "--tgt", "usps", "--epochs-source", "-1"], "--epochs-source"),
        (["--src", "mnist", "--tgt", "usps", "--no-magnet", "--no-adversarial"], "nothing to train"),
    ],
)
def test_cli_refuses_bad_flags_before_work(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_missing_data_is_one_line_and_nonzero(tmp_path, capsys):
    code = main(["train", "--src", "mnist", "--tgt", "usps", "--data-dir", str(tmp_path), "--no-download",
                 "--quiet", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "train-images-idx3-ubyte" in err
    assert not (tmp_path / "run").exists()


def test_eval_of_missing_run_is_an_error(tmp_path, capsys):
    assert main(["eval", "--run", str(tmp_path)]) == 1
    assert "config.json" in capsys.readouterr().err


def test_import_does_not_pull_torch():
    import subprocess
    import sys

    code = "import sys, madda_rs; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_report_summarises_runs(generated_data_dir, tmp_path, capsys):
    for seed in (0, 1):
        main(["train", "--src", "mnist", "--tgt", "usps", "--epochs-source", "1", "--epochs-target", "1", "--seed",
              str(seed), "--data-dir", generated_data_dir, "--out", str(tmp_path / f"s{seed}"), "--quiet"])
    capsys.readouterr()
    assert main(["report", str(tmp_path / "s0"), str(tmp_path / "s1")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 3 and "| 0,1 |" in table[2] and "±" in table[2]
    assert main(["report", "--by-epoch", str(tmp_path / "s0")]) == 0
    assert capsys.readouterr().out.splitlines()[2].startswith("| 1 |")


def test_discriminator_learning_rate_is_separate(generated_data_dir, monkeypatch):
    import madda_rs.training as training

    made = []
    real_adam = training._adam

    def recording_adam(params, config, lr=None):
        opt = real_adam(params, config, lr)
        made.append(opt.param_groups[0]["lr"])
        return opt

    monkeypatch.setattr(training, "_adam", recording_adam)
    train(_config(generated_data_dir, lr_discriminator=1e-3, epochs_source=1, epochs_target=1))
    assert made == [1e-4, 1e-4, 1e-3]  # source, target, discriminator
    with pytest.raises(ValueError, match="lr_discriminator"):
        _config(generated_data_dir, lr_discriminator=-1.0)
