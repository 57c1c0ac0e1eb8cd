"""Your own images end to end: PNG folders in, a run trained from the CLI, `predict` on new
images, an exported folder that predicts without the training code, and a one-line refusal (exit
2) for every bad folder."""

import ast
import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import madda_rs
import madda_rs.data.folders as folders
from madda_rs.cli import main

from digits import bars

NAMES = ["bottom", "middle", "top"]  # bars' classes 0, 4, 9: far apart, so one epoch separates them
KEEP = (0, 4, 9)


def _save(images, labels, root: Path, by_class: bool, nested: bool = False, size=None, mode="L"):
    for i, (img, c) in enumerate(zip(images, labels)):
        if c not in KEEP:
            continue
        folder = root / NAMES[KEEP.index(c)] if by_class else root / (f"part{i % 3}" if nested else "")
        folder.mkdir(parents=True, exist_ok=True)
        picture = Image.fromarray(img[0]).convert(mode)
        picture.resize(size).save(folder / f"{i:04d}.png") if size else picture.save(folder / f"{i:04d}.png")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """src/<class>/ (28 x 28 grey), tgt/ at depths 1-2 (32 x 32 colour), tgt-test/<class>/, new/."""
    root = tmp_path_factory.mktemp("folders")
    _save(*bars(300, 28, 0), root / "src", True)
    _save(*bars(300, 28, 1), root / "tgt", False, nested=True, size=(32, 32), mode="RGB")
    _save(*bars(120, 28, 2), root / "tgt-test", True, size=(32, 32), mode="RGB")
    _save(*bars(60, 28, 3), root / "new", False, size=(32, 32), mode="RGB")
    return root


@pytest.fixture(scope="module")
def run(tree, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    out = tmp_path_factory.mktemp("runs") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(folders.CACHE_ENV, str(cache))
        assert main(["train", "--src", str(tree / "src"), "--tgt", str(tree / "tgt"), "--tgt-test",
                     str(tree / "tgt-test"), "--epochs-source", "2", "--epochs-target", "1", "--threads", "1",
                     "--device", "cpu", "--out", str(out), "--quiet"]) == 0
    return out


def _labels_by_folder(rows):
    return sum(r["label"] == Path(r["path"]).parent.name for r in rows) / len(rows)


def test_a_run_trains_from_folders_and_records_geometry_and_class_names(run):
    config = json.loads((run / "config.json").read_text())
    assert config["image_size"] == [28, 28] and config["channels"] == 1  # the source's, by default
    assert config["class_names"] == NAMES
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["classes"] == NAMES
    assert np.array(metrics["confusion"]).sum() == len(list(Path(config["tgt_test"]).rglob("*.png")))


def test_predict_on_the_runs_own_test_folder_scores_exactly_the_run(run, tree, tmp_path):
    out = tmp_path / "labels.csv"
    assert main(["predict", str(run), str(tree / "tgt-test"), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert set(rows[0]) == {"path", "label", "vote_share", "centre_distance", "unfamiliar"}
    assert {r["label"] for r in rows} <= set(NAMES)
    assert _labels_by_folder(rows) == json.loads((run / "metrics.json").read_text())["target_accuracy"]
    k = json.loads((run / "config.json").read_text())["k"]
    assert all(float(r["vote_share"]) * k == round(float(r["vote_share"]) * k) for r in rows)


def test_predict_writes_jsonl_and_npz_and_python_gives_the_same(run, tree, tmp_path):
    assert main(["predict", str(run), str(tree / "new"), "--out", str(tmp_path / "a.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    trained = madda_rs.load_run(run)
    by_python = trained.predict(tree / "new")
    assert [r["label"] for r in rows] == by_python["label"].tolist()
    assert np.allclose([r["centre_distance"] for r in rows], by_python["centre_distance"])
    images = np.stack([np.asarray(Image.open(r["path"]).convert("L").resize((28, 28), Image.BILINEAR))
                       for r in rows])
    assert trained.predict(images)["label"].tolist() == by_python["label"].tolist()  # arrays in hand, (N, H, W)
    np.savez(tmp_path / "imgs.npz", images=images)
    assert main(["predict", str(run), str(tmp_path / "imgs.npz"), "--out", str(tmp_path / "b.npz")]) == 0
    with np.load(tmp_path / "b.npz") as f:
        assert f["index"].tolist() == list(range(len(images))) and f["label"].tolist() == by_python["label"].tolist()
    with pytest.raises(SystemExit) as exc:  # nothing a user made is overwritten unasked
        main(["predict", str(run), str(tree / "new"), "--out", str(tmp_path / "a.jsonl")])
    assert exc.value.code == 2


def test_the_exported_folder_predicts_alike_without_training_code(run, tree, tmp_path):
    shipped = tmp_path / "shipped"
    assert main(["export", str(run), "--out", str(shipped)]) == 0
    assert {"encoder.pt", "predict.py", "decode.py", "run.json", "source_embeddings.npy", "source_labels.npy"} <= {
        p.name for p in shipped.iterdir()}
    imports = set()
    for name in ("predict.py", "decode.py"):
        for node in ast.walk(ast.parse((shipped / name).read_text())):
            if isinstance(node, ast.Import):
                imports |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:  # relative: only inside madda_rs
                imports.add((node.module or "").split(".")[0])
    assert imports <= {"__future__", "argparse", "csv", "json", "os", "sys", "warnings", "concurrent", "pathlib",
                       "typing", "importlib", "numpy", "torch", "PIL", "madda_rs", "decode"}
    assert main(["predict", str(run), str(tree / "new"), "--out", str(tmp_path / "ours.csv")]) == 0
    proc = subprocess.run([sys.executable, str(shipped / "predict.py"), str(tree / "new"), "--out",
                           str(tmp_path / "shipped.csv")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    ours, theirs = (list(csv.DictReader((tmp_path / name).open())) for name in ("ours.csv", "shipped.csv"))
    assert [(r["path"], r["label"], r["vote_share"]) for r in theirs] == [
        (r["path"], r["label"], r["vote_share"]) for r in ours]
    # TorchScript may round the last bits of a float differently from the eager model
    assert np.allclose([float(r["centre_distance"]) for r in theirs], [float(r["centre_distance"]) for r in ours],
                       rtol=1e-4)
    onnx = json.loads((shipped / "run.json").read_text())["onnx"]
    if importlib.util.find_spec("onnxruntime") is not None:  # the test extra installs both
        assert onnx["checked"] and onnx["max_abs_difference"] < 1e-4 and (shipped / "encoder.onnx").is_file()
    with pytest.raises(ValueError, match="not empty"):
        from madda_rs.inference.export import export_run

        export_run(run, shipped)


def test_a_second_read_of_a_folder_comes_from_the_cache(tree, tmp_path, monkeypatch):
    monkeypatch.setenv(folders.CACHE_ENV, str(tmp_path))
    geometry = folders.Geometry(1, 28, 28)
    first = folders.read_folder(tree / "src", geometry, labelled=True)
    monkeypatch.setattr(folders, "decode_images", lambda *a, **k: pytest.fail("decoded again"))
    again = folders.read_folder(tree / "src", geometry, labelled=True)
    assert np.array_equal(first.images, again.images) and np.array_equal(first.labels, again.labels)
    assert len(list(tmp_path.glob("*.npy"))) == 1
    files = folders.unlabelled_files(tree / "tgt")
    assert folders.common_geometry(tree / "tgt", files) == folders.Geometry(3, 32, 32)  # the most common
    assert folders.common_geometry(tree / "tgt", files) == folders.Geometry(3, 32, 32)  # from the cache
    assert len(list(tmp_path.glob("*.json"))) == 1


def _refused(capsys, *argv):
    with pytest.raises(SystemExit) as exc:
        code = main(["train", *argv, "--epochs-source", "1", "--epochs-target", "1", "--device", "cpu", "--quiet"])
        raise SystemExit(code)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1, err
    return err[0]


def test_bad_folders_are_refused_before_training_with_one_line_naming_the_path(tree, tmp_path, capsys,
                                                                                 monkeypatch):
    monkeypatch.setenv(folders.CACHE_ENV, str(tmp_path / "cache"))
    out = ["--out", str(tmp_path / "run")]
    (tmp_path / "empty").mkdir()
    assert "empty: no class subfolders" in _refused(capsys, "--src", str(tmp_path / "empty"), "--tgt",
                                                    str(tree / "tgt"), *out)
    assert "empty: no images" in _refused(capsys, "--src", str(tree / "src"), "--tgt", str(tmp_path / "empty"), *out)
    hollow = tmp_path / "hollow"
    for name in ("a", "b"):
        (hollow / name).mkdir(parents=True)
    Image.new("L", (28, 28)).save(hollow / "a" / "x.png")
    assert "hollow/b: a class folder without images" in _refused(capsys, "--src", str(hollow), "--tgt",
                                                                 str(tree / "tgt"), *out)
    single = tmp_path / "single" / "only"
    single.mkdir(parents=True)
    Image.new("L", (28, 28)).save(single / "x.png")
    assert "at least two" in _refused(capsys, "--src", str(single.parent), "--tgt", str(tree / "tgt"), *out)
    broken = tmp_path / "broken"
    for name in ("a", "b"):
        (broken / name).mkdir(parents=True)
        Image.new("L", (28, 28)).save(broken / name / "fine.png")
    (broken / "b" / "corrupt.png").write_bytes(b"\x89PNG not really")
    assert "broken/b/corrupt.png: cannot" in _refused(capsys, "--src", str(broken), "--tgt", str(tree / "tgt"), *out)
    extra = tmp_path / "extra"
    for name in NAMES + ["seventh"]:
        (extra / name).mkdir(parents=True)
        Image.new("L", (28, 28)).save(extra / name / "x.png")
    line = _refused(capsys, "--src", str(tree / "src"), "--tgt", str(tree / "tgt"), "--tgt-test", str(extra), *out)
    assert "extra: classes seventh are not among the source's" in line
    assert not (tmp_path / "run").exists()  # refused before any run folder was made


def test_the_readmes_own_image_commands_run_as_written(data_dir, tmp_path, monkeypatch):
    """The README's lines on a generated tree (10 images per class, 1 + 1 epochs: the commands,
    not the accuracy, are under test)."""
    import shlex

    monkeypatch.setenv(folders.CACHE_ENV, str(tmp_path / "cache"))
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text().split("## Your own images", 1)[1].split("```bash", 1)[1]
    lines = [line.split("  #")[0].strip() for line in readme.split("```", 1)[0].strip().splitlines()]
    assert len(lines) == 4
    for line in lines:
        for command in line.split(" && "):
            argv = shlex.split(command.replace("../shared/data", data_dir))
            if argv[0] == "python":
                argv = [sys.executable, str(root / argv[1]) if argv[1].startswith("scripts/") else argv[1], *argv[2:]]
            else:
                assert argv[0] == "madda-rs"
                argv = [sys.executable, "-m", "madda_rs", *argv[1:]]
            if "image_folders.py" in argv[1]:
                argv += ["--per-class", "10"]
            if "train" in argv or "tune" in argv:
                argv += ["--epochs-source", "1", "--epochs-target", "1", "--threads", "1", "--quiet"]
            if "tune" in argv:
                argv += ["--candidates", "2"]
            proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, (command, proc.stderr[-3000:])
    ours, shipped = ((tmp_path / name).read_text().splitlines() for name in ("labels.csv", "shipped.csv"))
    assert len(ours) == len(shipped) > 1
    assert [row.split(",")[:2] for row in ours] == [row.split(",")[:2] for row in shipped]
