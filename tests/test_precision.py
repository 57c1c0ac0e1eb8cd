"""--precision: autocast forward passes in bf16/fp16, float32 everywhere else, refused where the device lacks it."""

import json

import pytest
import torch

import madda_rs.run.precision as precision
from madda_rs.backbones import get_backbone
from madda_rs.cli import main
from madda_rs.config import TrainConfig
from madda_rs.run.precision import Precision, check_precision, resolve_precision


def _argv(data_dir, out, *flags):
    return ["train", "--src", "mnist", "--tgt", "usps", "--data-dir", data_dir, "--no-download", "--device", "cpu",
            "--out", str(out), "--quiet", "--threads", "1", "--epochs-source", "1", *flags]


@pytest.fixture
def bf16_cpu(monkeypatch):
    """A CPU that reports AVX512-BF16 (torch runs bf16 autocast on any CPU, emulating it where needed)."""
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})


def test_a_precision_the_device_lacks_is_refused_naming_the_device_and_what_it_runs(monkeypatch, generated_data_dir,
                                                                                    tmp_path, capsys):
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match=r"--precision fp16: this CPU runs fp32"):
        check_precision("fp16", cpu)
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "avx512f"})
    with pytest.raises(ValueError, match=r"--precision bf16: this CPU \(it has neither AVX512-BF16 nor AMX-BF16\) "
                                         r"runs fp32$"):
        check_precision("bf16", cpu)
    check_precision("fp32", cpu)
    assert main(_argv(generated_data_dir, tmp_path / "run", "--precision", "bf16")) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--precision bf16: this CPU" in err
    assert not (tmp_path / "run").exists()  # refused before any work
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"amx_bf16"})
    check_precision("bf16", cpu)


def test_forward_passes_run_in_the_precision_and_come_back_as_float32():
    torch.manual_seed(0)
    layer, x = torch.nn.Linear(64, 64), torch.randn(8, 64)
    exact = layer(x)
    assert torch.equal(Precision("fp32", torch.device("cpu")).forward(layer, x), exact)
    low = Precision("bf16", torch.device("cpu")).forward(layer, x)
    assert low.dtype == torch.float32
    # bf16 keeps 8 bits of mantissa: close to float32, never equal to it
    assert not torch.equal(low, exact) and torch.allclose(low, exact, atol=0.1)


def test_a_bf16_run_trains_records_its_precision_and_saves_float32_models(bf16_cpu, generated_data_dir, tmp_path):
    calls = []
    real = Precision.forward

    def counted(self, module, *args):
        calls.append(self.name)
        return real(self, module, *args)

    Precision.forward = counted
    try:
        assert main(_argv(generated_data_dir, tmp_path / "run", "--epochs-target", "1", "--precision", "bf16")) == 0
    finally:
        Precision.forward = real
    assert calls and set(calls) == {"bf16"}  # every training forward pass went through it
    assert json.loads((tmp_path / "run" / "config.json").read_text())["precision"] == "bf16"
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["target_accuracy"] > 0.2
    for name in ("source.pt", "target.pt"):
        state = torch.load(tmp_path / "run" / name, weights_only=False)
        tensors = [v for v in (state.get("state_dict", state)).values() if torch.is_tensor(v) and v.is_floating_point()]
        assert tensors and all(v.dtype == torch.float32 for v in tensors)


def test_a_nan_loss_under_reduced_precision_stops_saying_so_and_keeps_the_checkpoint(bf16_cpu, generated_data_dir,
                                                                                     tmp_path,
                                                                                     magnet_nan_in_target_epoch_2,
                                                                                     capsys):
    code = main(_argv(generated_data_dir, tmp_path / "run", "--epochs-target", "3", "--checkpoint-every", "1",
                      "--precision", "bf16"))
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "magnet_loss is nan" in err and "after epoch 1" in err and "training in bf16" in err
    assert "--precision fp32" in err
    assert json.loads((tmp_path / "run" / "progress.json").read_text())["epoch"] == 1


def test_the_default_is_bf16_where_the_cpu_runs_it_and_fp32_elsewhere_and_the_run_records_it(monkeypatch,
                                                                                           generated_data_dir,
                                                                                           tmp_path):
    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512f", "amx_bf16"})
    assert resolve_precision(None, cpu) == "bf16" and resolve_precision("fp32", cpu) == "fp32"
    assert resolve_precision(None, torch.device("cuda")) == "fp32"  # half precision on a GPU is asked for
    # a backbone measured slower in bf16 (EfficientNet-Lite0's depthwise convolutions) stays fp32 unless asked
    assert resolve_precision(None, cpu, get_backbone("efficientnet-lite0").cpu_bf16_default) == "fp32"
    assert resolve_precision("bf16", cpu, get_backbone("efficientnet-lite0").cpu_bf16_default) == "bf16"
    assert resolve_precision(None, cpu, get_backbone("resnet-cifar").cpu_bf16_default) == "bf16"
    # train() asks the run's backbone: one that says fp32 trains, and records, fp32 on a bf16 CPU
    monkeypatch.setattr(get_backbone("lenet"), "cpu_bf16_default", False)
    assert main(_argv(generated_data_dir, tmp_path / "kept-fp32", "--epochs-target", "1")) == 0
    assert json.loads((tmp_path / "kept-fp32" / "config.json").read_text())["precision"] == "fp32"
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "avx512f"})
    assert resolve_precision(None, cpu) == "fp32"
    assert main(_argv(generated_data_dir, tmp_path / "run", "--epochs-target", "1")) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["precision"] == "fp32"
    # a config saved before the setting existed trained in float32, and says so when read
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    del saved["precision"]
    assert TrainConfig.from_dict(saved).precision == "fp32"
