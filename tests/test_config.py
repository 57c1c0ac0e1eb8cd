"""One home for defaults: presets, overrides, validation, and the flags generated from the config."""

import dataclasses

import pytest

from madda_rs.cli import build_parser, config_from_args
from madda_rs.config import PRESET_FIELDS, PRESETS, TrainConfig, run_fields
from madda_rs.methods.madda import MaddaSettings


@pytest.mark.parametrize("preset", list(PRESETS))
def test_a_preset_holds_its_values(preset):
    config = TrainConfig(preset=preset)
    assert {n: getattr(config, n) for n in PRESET_FIELDS} == PRESETS[preset]
    assert config.overridden == ()


def test_presets_cover_every_preset_field():
    for values in PRESETS.values():
        assert set(values) == set(PRESET_FIELDS)
    assert MaddaSettings.presets.keys() == PRESETS.keys()  # M-ADDA takes every preset; its values:
    assert TrainConfig(preset="official").negatives == "violating" and TrainConfig().negatives == "random"
    assert TrainConfig(preset="improved").settings == MaddaSettings(**{**dataclasses.asdict(MaddaSettings()),
                                                                      **MaddaSettings.presets["improved"]})


def test_overrides_are_recorded_and_survive_json():
    config = TrainConfig(preset="official", negatives="random", k=5, seed=3)
    assert config.negatives == "random" and config.centers == "kmeans"  # the rest stays official
    assert config.overridden == ("k", "negatives")
    saved = config.to_dict()
    assert saved["preset"] == "official" and saved["overridden"] == ["k", "negatives"]
    assert TrainConfig.from_dict(saved) == config
    # a value equal to the preset's is not an override
    assert TrainConfig(preset="official", negatives="violating").overridden == ()


def test_from_preset_ignores_none():
    assert TrainConfig.from_preset("official", k=None, seed=None) == TrainConfig(preset="official")


def test_unknown_saved_setting_is_refused():
    with pytest.raises(ValueError, match="unknown config settings: bogus"):
        TrainConfig.from_dict({**TrainConfig().to_dict(), "bogus": 1})


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(preset="fast"), "preset must be one of"),
        (dict(k=0), "k must be an integer >= 1"),
        (dict(k=2.5), "k must be an integer"),
        (dict(epochs_source=True), "epochs_source must be an integer"),
        (dict(negatives="hard"), "negatives must be one of"),
        (dict(lr=0.0), "lr must be > 0"),
        (dict(betas=(0.5,)), "betas must be 2 numbers"),
        (dict(betas=(0.5, 1.0)), r"betas must be two numbers in \[0, 1\)"),
        (dict(src="usps", tgt="usps"), "must differ"),
        (dict(magnet=False, adversarial=False), "nothing to train"),
        (dict(threads=0), "threads must be an integer >= 1"),
        (dict(subset_seed=-1), "subset_seed must be an integer >= 0"),
    ],
)
def test_bad_settings_are_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kw)


def test_switches_must_be_booleans():
    with pytest.raises(TypeError, match="magnet must be True or False"):
        TrainConfig(magnet="no")


def _parse(*argv):
    return build_parser().parse_args(["train", "--src", "mnist", "--tgt", "usps", *argv])


def test_flags_default_to_not_given():
    args = _parse()
    assert {k for k in vars(args) if k not in ("command", "out", "resume", "overwrite", "quiet")} == {"src", "tgt"}
    assert config_from_args(_parse("--preset", "official")) == TrainConfig(preset="official")


def test_a_given_flag_overrides_the_preset_and_only_it():
    config = config_from_args(_parse("--preset", "official", "--epochs-target", "5", "--no-magnet"))
    assert config.epochs_target == 5 and not config.magnet and config.negatives == "violating"
    assert config.overridden == ("epochs_target",)


def test_every_setting_has_a_flag_and_help_shows_each_presets_value(monkeypatch):
    monkeypatch.setenv("COLUMNS", "10000")  # argparse wraps at hyphens, splitting preset names
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    flat = " ".join(help_text.split())
    for f in run_fields() + dataclasses.fields(MaddaSettings):
        assert "--" + f.name.replace("_", "-") in help_text, f.name
    assert ("[--method madda; paper: random; official: violating; improved: semihard; labelfree: semihard; "
            "tuned-mnist-usps: semihard]") in flat
    assert ("[--method adda, madda; paper: 1; official: 3; improved: 1; labelfree: 1; tuned-mnist-usps: 1]"
            in flat)  # adversarial passes
