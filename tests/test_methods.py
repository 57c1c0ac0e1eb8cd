"""The methods registry: a new method is one file, found when dropped into madda_rs.methods or
named on the command line, and everything else (config checks, run names, eval) asks the registry."""

import json
import sys
from pathlib import Path

import pytest

import madda_rs.methods as methods
from madda_rs.cli import main
from madda_rs.config import TrainConfig
from madda_rs.experiments.reproduce import slug
from madda_rs.scores.evaluate import evaluate_run

# The whole method of docs/extending.md, as written there: one module, built from the public
# shared stages only (a softmax source model, an adversarial target stage, the kNN vote).
EXTENDING = (Path(__file__).resolve().parents[1] / "docs" / "extending.md").read_text()
TOY_METHOD = EXTENDING.split("## Add a method", 1)[1].split("```python", 1)[1].split("```", 1)[0]
assert '@register_method("toy")' in TOY_METHOD
TOY_METHOD = TOY_METHOD.replace('@register_method("toy")', '@register_method("NAME")')


@pytest.fixture
def registry(monkeypatch):
    """A registry of its own for the test, so toy methods do not outlive it."""
    methods.discover()  # the shipped methods register once, on first import: into the real registry
    monkeypatch.setattr(methods, "_REGISTRY", dict(methods._REGISTRY))
    return methods._REGISTRY


def test_a_method_in_its_own_file_trains_through_the_cli(registry, generated_data_dir, tmp_path):
    module = tmp_path / "toy_method.py"
    module.write_text(TOY_METHOD.replace("NAME", "toy"))
    spec = f"{module}:toy"
    out = tmp_path / "run"
    argv = ["train", "--src", "mnist", "--tgt", "usps", "--data-dir", generated_data_dir, "--no-download",
            "--device", "cpu", "--threads", "1", "--method", spec, "--epochs-source", "1", "--epochs-target", "1",
            "--out", str(out), "--quiet"]
    assert main([*argv, "--label-smoothing", "0.1"]) == 0  # its own setting, a flag since --method names it
    metrics = json.loads((out / "metrics.json").read_text())
    saved = json.loads((out / "config.json").read_text())
    assert saved["method"] == spec and saved["label_smoothing"] == 0.1 and saved["overridden"][-1] == "label_smoothing"
    assert "magnet" not in saved and "k" in saved  # M-ADDA's settings are not the toy's
    assert len(metrics["history"]["source"]) == len(metrics["history"]["target"]) == 1
    assert set(metrics["history"]["target"][0]) >= {"d_loss", "g_loss", "d_acc"}  # the shared adversarial stage ran
    assert 0.0 <= metrics["target_accuracy"] <= 1.0
    # everything else learns it from the registry: run names, config checks, re-scoring
    config = TrainConfig(method=spec, src="mnist", tgt="usps")
    assert slug(config, "short").startswith("mnist2usps-standard-adda-toy-paper-")
    with pytest.raises(ValueError, match="toy takes no augment"):
        methods.check_config(TrainConfig(method=spec, augment=True))
    # its presets set its settings; a preset it does not name is refused
    assert TrainConfig(method=spec, preset="improved").label_smoothing == 0.1
    with pytest.raises(ValueError, match="has no preset 'official'; its presets: paper, improved"):
        TrainConfig(method=spec, preset="official")
    # a method setting it does not read is refused by name, from the CLI before any work (exit 2)
    with pytest.raises(ValueError, match=r"--method .*toy does not read --magnet-labels"):
        methods.check_config(TrainConfig(method=spec, magnet_labels="clusters"))
    with pytest.raises(ValueError, match=r"--method madda does not read --label-smoothing"):
        TrainConfig(method="madda", label_smoothing=0.1)
    with pytest.raises(SystemExit) as exc:
        main([*argv[:-3], "--magnet-labels", "clusters", "--out", str(tmp_path / "refused"), "--quiet"])
    assert exc.value.code == 2 and not (tmp_path / "refused").exists()
    scores = evaluate_run(str(out), device="cpu")
    assert scores["target_accuracy"] == pytest.approx(metrics["target_accuracy"])


def test_a_module_dropped_into_the_methods_package_is_found(registry, tmp_path, monkeypatch):
    (tmp_path / "dropped_in.py").write_text(TOY_METHOD.replace("NAME", "dropped"))
    monkeypatch.setattr(methods, "__path__", [*methods.__path__, str(tmp_path)])
    monkeypatch.delitem(sys.modules, "madda_rs.methods.dropped_in", raising=False)
    assert "dropped" in methods.method_names()
    assert {"madda", "adda"} <= set(methods.method_names())
    assert methods.check_config(TrainConfig(method="dropped")).name == "dropped"
    sys.modules.pop("madda_rs.methods.dropped_in", None)


def test_unknown_methods_and_clashing_names_are_refused(registry, tmp_path):
    with pytest.raises(ValueError, match="method must be one of adda, madda"):
        methods.check_config(TrainConfig(method="nope"))
    with pytest.raises(ValueError, match="does not exist"):
        methods.check_config(TrainConfig(method=str(tmp_path / "missing.py") + ":x"))
    module = tmp_path / "other.py"
    module.write_text(TOY_METHOD.replace("NAME", "toy2"))
    with pytest.raises(ValueError, match="registers no method 'nope'"):
        methods.check_config(TrainConfig(method=f"{module}:nope"))
    with pytest.raises(ValueError, match="already registered"):
        methods.register_method("madda")(type("Impostor", (methods.Method,), {}))


def test_a_methods_settings_are_checked_when_it_registers(registry):
    import dataclasses

    from madda_rs.config import MethodSettings, setting

    def method(settings, **attrs):
        return type("Bad", (methods.Method,), {"settings": settings, **attrs})

    @dataclasses.dataclass(frozen=True)
    class Voting(MethodSettings):
        k: int = setting(2, "neighbours", type=int, minimum=1)

    with pytest.raises(TypeError, match="its settings must declare k"):  # the default predictor votes by k
        methods.register_method("bad1")(method(MethodSettings))
    with pytest.raises(TypeError, match="frozen"):
        methods.register_method("bad2")(method(dataclasses.dataclass(type("Loose", (MethodSettings,), {}))))
    with pytest.raises(ValueError, match="presets must map preset names"):
        methods.register_method("bad3")(method(type("Odd", (Voting,), {"presets": {"fast": {"k": 3}}})))
    with pytest.raises(ValueError, match="presets must map preset names"):
        methods.register_method("bad4")(method(type("Odd", (Voting,), {"presets": {"paper": {"margin": 3}}})))
    with pytest.raises(ValueError, match="seed already name run settings"):
        clash = dataclasses.make_dataclass("Clash", [("seed", int, setting(0, "a seed", type=int))],
                                           bases=(Voting,), frozen=True)
        methods.register_method("bad5")(method(clash))
    assert not {"bad1", "bad2", "bad3", "bad4", "bad5"} & set(registry)
    methods.register_method("good")(method(Voting))
    assert TrainConfig(method="good", k=5).k == 5
    with pytest.raises(SystemExit) as exc:
        main(["train", "--src", "mnist", "--tgt", "usps", "--method", "nope"])
    assert exc.value.code == 2


def test_the_shipped_methods_predict_as_documented(registry):
    from madda_rs.scores.predictors import ClassifierPredictor, KnnPredictor

    assert set(methods.method_names()) >= {"madda", "adda"}
    madda, adda = methods.get_method("madda"), methods.get_method("adda")
    assert madda.predictor.__func__ is methods.Method.predictor  # the kNN vote, the default
    assert adda.predictor.__func__ is not methods.Method.predictor
    assert issubclass(ClassifierPredictor, KnnPredictor)
    assert slug(TrainConfig(method="adda"), "short").startswith("mnist2usps-standard-adda-adda-e")
