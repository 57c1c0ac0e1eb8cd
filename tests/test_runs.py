"""Runs that stop: resume after SIGKILL and Ctrl-C, determinism, NaN losses, run folders, warnings."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import madda_rs
import madda_rs.methods.madda as madda_stage
from madda_rs.cli import main
from madda_rs.config import TrainConfig
from madda_rs.training import train

from digits import bars

TIMING = {"seconds", "wall_seconds", "seconds_per_source_epoch", "seconds_per_target_epoch", "out_dir"}


def _untimed(value):
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def _metrics(run):
    return _untimed(json.loads((run / "metrics.json").read_text()))


def _same_tensors(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_tensors(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def _checkpoint(run):
    ckpt = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
    return ckpt["stages"], _untimed(ckpt["history"])


def _argv(data_dir, out, *flags):
    return ["train", "--src", "mnist", "--tgt", "usps", "--data-dir", data_dir, "--no-download", "--device", "cpu",
            "--out", str(out), "--quiet", "--deterministic", "--eval-every", "2", "--checkpoint-every", "1", *flags]


def _cli_process(*argv):
    return subprocess.Popen([sys.executable, "-m", "madda_rs", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _ctrl_c_in_epoch_2(monkeypatch, stage_class):
    """Ctrl-C in the middle of `stage_class`'s second epoch; returns what puts the real epoch back."""
    real = stage_class.run_epoch

    def interrupted_in_epoch_2(stage, epoch):
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C mid-epoch
        return real(stage, epoch)

    monkeypatch.setattr(stage_class, "run_epoch", interrupted_in_epoch_2)
    return lambda: monkeypatch.setattr(stage_class, "run_epoch", real)


def test_resume_after_sigkill_in_stage_2_equals_an_uninterrupted_run(generated_data_dir, tmp_path):
    # official: its zeroed-grad Adam state is the easiest to lose in a checkpoint
    flags = ("--preset", "official", "--adversarial-passes", "1", "--epochs-source", "1", "--epochs-target", "6")
    whole = _cli_process(*_argv(generated_data_dir, tmp_path / "whole", *flags))
    assert whole.wait(timeout=600) == 0, whole.stderr.read()

    killed = _cli_process(*_argv(generated_data_dir, tmp_path / "killed", *flags))
    progress = tmp_path / "killed" / "progress.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and killed.poll() is None:
        if progress.is_file():
            state = json.loads(progress.read_text())  # written atomically: never half a file
            if state["stage"] == "target" and state["epoch"] >= 2:
                break
        time.sleep(0.02)
    assert killed.poll() is None, "the run ended before it could be killed"
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    assert not (tmp_path / "killed" / "metrics.json").exists()
    at_kill = json.loads(progress.read_text())
    assert at_kill["stage"] == "target" and 2 <= at_kill["epoch"] < 6

    assert main(["train", "--resume", str(tmp_path / "killed"), "--quiet"]) == 0
    assert _metrics(tmp_path / "killed") == _metrics(tmp_path / "whole")
    assert _same_tensors(_checkpoint(tmp_path / "killed"), _checkpoint(tmp_path / "whole"))


def test_deterministic_runs_are_identical(generated_data_dir, tmp_path):
    for name in ("a", "b"):
        assert main(_argv(generated_data_dir, tmp_path / name, "--epochs-source", "2", "--epochs-target", "2")) == 0
    assert _metrics(tmp_path / "a") == _metrics(tmp_path / "b")
    assert _same_tensors(_checkpoint(tmp_path / "a"), _checkpoint(tmp_path / "b"))
    for model in ("source.pt", "target.pt"):
        a = torch.load(tmp_path / "a" / model, weights_only=True)["state_dict"]
        assert _same_tensors(a, torch.load(tmp_path / "b" / model, weights_only=True)["state_dict"])


def test_a_run_adapting_another_runs_source_model_equals_the_run_that_trained_it(generated_data_dir, tmp_path,
                                                                                   capsys, monkeypatch):
    epochs = ("--epochs-source", "2", "--epochs-target", "2")
    assert main(_argv(generated_data_dir, tmp_path / "whole", *epochs)) == 0

    def no_stage_1(*args):
        raise AssertionError("stage 1 trained")

    monkeypatch.setattr(madda_stage.TripletSourceStage, "batch_loss", no_stage_1)
    # the borrowed stage 1 keeps its own times; they are not this run's (a day, written in to tell them apart)
    record = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    for epoch in record["history"]["source"]:
        epoch["wall_seconds"] += 86400
    (tmp_path / "whole" / "metrics.json").write_text(json.dumps(record))
    assert main(_argv(generated_data_dir, tmp_path / "adapted", *epochs, "--source-from", str(tmp_path / "whole"))) == 0
    whole, adapted = _metrics(tmp_path / "whole"), _metrics(tmp_path / "adapted")
    source_pt = (tmp_path / "whole" / "source.pt").read_bytes()
    assert adapted.pop("source_from") == {"run": str(tmp_path / "whole"), "sha256": hashlib.sha256(source_pt).hexdigest()}
    assert whole.pop("source_from") is None
    assert adapted == whole  # stage 1's history copied, stage 2 drawn exactly as the whole run drew it
    timed = json.loads((tmp_path / "adapted" / "metrics.json").read_text())
    assert timed["history"]["source"][0]["wall_seconds"] > 86400 and timed["wall_seconds"] < 86400
    for model in ("source.pt", "target.pt"):
        a = torch.load(tmp_path / "whole" / model, weights_only=True)["state_dict"]
        assert _same_tensors(a, torch.load(tmp_path / "adapted" / model, weights_only=True)["state_dict"])
    # stage 2's own settings may differ; a setting stage 1 reads may not, nor may the model's input
    assert main(_argv(generated_data_dir, tmp_path / "im", "--epochs-source", "2", "--epochs-target", "1",
                      "--im-weight", "1", "--lr-target", "3e-5", "--k", "5",
                      "--source-from", str(tmp_path / "whole"))) == 0
    assert json.loads((tmp_path / "im" / "config.json").read_text())["source_from"] == str(tmp_path / "whole")
    capsys.readouterr()
    for flags, says in [(("--epochs-source", "3"), "epochs_source 2 there, 3 here"),
                        (("--margin", "0.5"), "margin 1.0 there, 0.5 here"),
                        (("--seed", "1"), "seed 0 there, 1 here"),
                        (("--method", "adda"), "method"),
                        (("--source-from", str(tmp_path / "nowhere")), "no such folder"),
                        (("--source-from", str(tmp_path)), "config.json is missing"),
                        (("--source-from", str(tmp_path / "refused")), "is this run's own --out")]:
        argv = _argv(generated_data_dir, tmp_path / "refused", "--epochs-target", "1", *flags)
        if "--source-from" not in flags:
            argv += ["--epochs-source", "2"] * ("--epochs-source" not in flags) + ["--source-from",
                                                                                      str(tmp_path / "whole")]
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "--source-from" in err and says in err and err.count("\n") == 1, err
        assert not (tmp_path / "refused").exists()


def test_a_source_from_run_resumes_on_its_own_copy_when_the_borrowed_run_has_gone(generated_data_dir, tmp_path,
                                                                                  monkeypatch, capsys):
    epochs = ("--epochs-source", "1", "--epochs-target", "4")
    assert main(_argv(generated_data_dir, tmp_path / "whole", *epochs)) == 0
    restore = _ctrl_c_in_epoch_2(monkeypatch, madda_stage.MaddaTargetStage)
    for name in ("cut", "changed"):
        assert main(_argv(generated_data_dir, tmp_path / name, *epochs, "--source-from", str(tmp_path / "whole"))) == 130
    restore()
    sha = hashlib.sha256((tmp_path / "whole" / "source.pt").read_bytes()).hexdigest()
    # a borrowed source.pt that changed under a stopped run is refused, not silently adapted from
    shutil.copytree(tmp_path / "whole", tmp_path / "kept")
    torch.save(torch.load(tmp_path / "whole" / "target.pt", weights_only=True), tmp_path / "whole" / "source.pt")
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "changed"), "--quiet"]) == 1
    assert "source.pt changed since this run began" in capsys.readouterr().err
    # gone: the run's own copy (checked against the checkpoint's record) stands in, and the result is the same
    shutil.rmtree(tmp_path / "whole")
    assert main(["train", "--resume", str(tmp_path / "cut"), "--quiet"]) == 0
    resumed = _metrics(tmp_path / "cut")
    assert resumed.pop("source_from") == {"run": str(tmp_path / "whole"), "sha256": sha}
    whole = _metrics(tmp_path / "kept")
    whole.pop("source_from"), whole.pop("out_dir", None)
    assert resumed == whole
    # ... unless that copy is not the one the run saved
    (tmp_path / "changed" / "source.pt").write_bytes(b"not a model")
    assert main(["train", "--resume", str(tmp_path / "changed"), "--quiet"]) == 1
    assert "is not the copy this run saved" in capsys.readouterr().err


def test_a_source_model_for_other_images_is_refused(tmp_path):
    config = TrainConfig(src="a", tgt="b", epochs_source=1, epochs_target=1, device="cpu", threads=1)
    train(config, str(tmp_path / "small"), source=bars(40, 28, 0), target=bars(30, 28, 1)[0])
    with pytest.raises(ValueError, match=r"reads 1 x 28 x 28 images, this run's source images are 1 x 32 x 32"):
        train(config.replace(source_from=str(tmp_path / "small")), str(tmp_path / "large"),
                       source=bars(40, 32, 0), target=bars(30, 32, 1)[0])


def test_ctrl_c_finishes_the_epoch_saves_and_resumes(generated_data_dir, tmp_path, monkeypatch, capsys):
    flags = ("--epochs-source", "1", "--epochs-target", "4")
    assert main(_argv(generated_data_dir, tmp_path / "whole", *flags)) == 0
    restore = _ctrl_c_in_epoch_2(monkeypatch, madda_stage.MaddaTargetStage)
    assert main(_argv(generated_data_dir, tmp_path / "cut", *flags)) == 130
    err = capsys.readouterr().err
    assert f"madda-rs train --resume {tmp_path / 'cut'}" in err and "after epoch 2" in err
    assert json.loads((tmp_path / "cut" / "progress.json").read_text())["epoch"] == 2
    restore()
    shutil.copytree(generated_data_dir, tmp_path / "moved")  # the data may move between sessions
    assert main(["train", "--resume", str(tmp_path / "cut"), "--quiet", "--data-dir", str(tmp_path / "moved")]) == 0
    assert _metrics(tmp_path / "cut") == _metrics(tmp_path / "whole")


def test_ctrl_c_in_a_softmax_source_stage_resumes_its_head_too(generated_data_dir, tmp_path, monkeypatch):
    # the softmax head lives beside the model only in stage 1: its weights and Adam state must
    # travel in the checkpoint, or the resumed stage restarts the head from scratch
    flags = ("--source-ce-weight", "1", "--epochs-source", "3", "--epochs-target", "1")
    assert main(_argv(generated_data_dir, tmp_path / "whole", *flags)) == 0
    restore = _ctrl_c_in_epoch_2(monkeypatch, madda_stage.TripletSourceStage)
    assert main(_argv(generated_data_dir, tmp_path / "cut", *flags)) == 130
    assert json.loads((tmp_path / "cut" / "progress.json").read_text())["stage"] == "source"
    restore()
    assert main(["train", "--resume", str(tmp_path / "cut"), "--quiet"]) == 0
    assert _metrics(tmp_path / "cut") == _metrics(tmp_path / "whole")


def test_nan_loss_stops_with_one_line_and_keeps_the_last_checkpoint(generated_data_dir, tmp_path,
                                                                    magnet_nan_in_target_epoch_2, capsys):
    code = main(_argv(generated_data_dir, tmp_path / "run", "--epochs-source", "1", "--epochs-target", "3"))
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "stage target, epoch 2: magnet_loss is nan" in err and "after epoch 1" in err
    assert json.loads((tmp_path / "run" / "progress.json").read_text()) == {"stage": "target", "epoch": 1, "epochs": 3}
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_run_folders_are_checked_before_any_work(generated_data_dir, tmp_path, capsys):
    argv = _argv(generated_data_dir, tmp_path / "run", "--epochs-source", "1", "--epochs-target", "1")
    assert main(argv) == 0
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and "already holds a run" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as exc:
        main(_argv(generated_data_dir, tmp_path / "file" / "run"))
    assert exc.value.code == 2 and "cannot write the run folder" in capsys.readouterr().err
    for bad in (["--resume", str(tmp_path / "none")], ["--resume", str(tmp_path / "run"), "--k", "3"]):
        with pytest.raises(SystemExit) as exc:
            main(["train", *bad])
        assert exc.value.code == 2
    assert "drop --k" in capsys.readouterr().err


def test_missing_data_is_one_line_and_leaves_no_folder(tmp_path, capsys):
    code = main(["train", "--src", "mnist", "--tgt", "usps", "--data-dir", str(tmp_path), "--no-download",
                 "--quiet", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "train-images-idx3-ubyte" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--src", "usps", "--tgt", "usps"], "must differ"),
        (["--src", "mnist", "--tgt", "usps", "--k", "0"], "--k"),
        (["--src", "mnist", "--tgt", "svhn"], "--tgt"),
        (["--tgt", "usps"], "--src is required"),
        (["--src", "mnist", "--tgt", "usps", "--epochs-source", "-1"], "--epochs-source"),
        (["--src", "mnist", "--tgt", "usps", "--no-magnet", "--no-adversarial"], "nothing to train"),
    ],
)
def test_cli_refuses_bad_flags_before_work(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_collapse_and_a_winning_discriminator_are_reported(generated_data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(madda_rs.native, "knn_predict", lambda src, y, tgt, k, threads=None: y[:1].repeat(len(tgt)))
    real = madda_stage.MaddaTargetStage.adversarial_epoch
    monkeypatch.setattr(madda_stage.MaddaTargetStage, "adversarial_epoch",
                        lambda self, gen, warp: {**real(self, gen, warp), "d_acc": 1.0})
    argv = _argv(generated_data_dir, tmp_path / "run", "--epochs-source", "1", "--epochs-target", "4")
    assert main([a for a in argv if a != "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "warning: target epoch 2: collapse: every target prediction is one class" in out
    warnings = json.loads((tmp_path / "run" / "metrics.json").read_text())["warnings"]
    assert any("discriminator wins outright" in w for w in warnings)


def test_labelfree_from_imagenet_weights_is_warned_about_and_the_warning_recorded(generated_data_dir, tmp_path,
                                                                                  monkeypatch):
    from madda_rs.config import TrainConfig
    from madda_rs.training import settings_advice

    pretrained = dict(backbone="resnet18", weights="imagenet")
    advice = settings_advice(TrainConfig(preset="labelfree", **pretrained))[0]
    assert "--im-weight 1 --lr 1e-3 --lr-target 1e-4" in advice
    assert settings_advice(TrainConfig(preset="labelfree")) == []  # from scratch: what it was chosen for
    assert settings_advice(TrainConfig(preset="paper", **pretrained)) == []
    # what the advice says is logged and lands in metrics.json's warnings, once
    monkeypatch.setattr(madda_rs.training, "settings_advice", lambda config: ["measured advice"])
    assert main(_argv(generated_data_dir, tmp_path / "run", "--epochs-source", "1", "--epochs-target", "1")) == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["warnings"].count("measured advice") == 1
