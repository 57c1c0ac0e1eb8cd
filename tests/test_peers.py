"""`madda-rs reproduce peers`: skada's methods through their own code on madda_rs's data, their
run records, skipping finished runs, the table and figure, and the error without the extra."""

import csv
import json
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch

from madda_rs.cli import main
from madda_rs.experiments import peers
from madda_rs.experiments.peers import MISSING_EXTRA, MissingExtraError, peer_state, plan_peers, require_skada
from madda_rs.experiments.reproduce import DEV_COLUMNS, plan

REPO = Path(__file__).resolve().parents[1]

COLUMNS = 4  # MNIST -> USPS and USPS -> MNIST, standard and pooled USPS splits


def _fake_adda_run(out, accuracy=0.5):
    """Table 1's ADDA run of seed 0, MNIST -> USPS standard, as committed records hold it."""
    run = next(r for r in plan("table1", (0,)) if r.config.method == "adda" and r.config.src == "mnist"
               and r.config.usps_split == "standard")
    folder = out / "runs" / run.slug
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(run.config.to_dict()))
    (folder / "metrics.json").write_text(json.dumps({"target_accuracy": accuracy, "wall_seconds": 7.0,
                                                     "label_free": {"pred_entropy": 0.9}, "history": {}}))


def test_peer_runs_are_recorded_skipped_when_done_and_tabled(generated_data_dir, tmp_path, capsys, monkeypatch):
    pytest.importorskip("skada")
    monkeypatch.setattr(peers, "CHOSEN_LR", {})  # every method at the presets' rate (the choice has its own test)
    monkeypatch.setattr(peers, "CHOSEN_REG", {})  # and skada's weights
    _fake_adda_run(tmp_path)
    args = ["reproduce", "peers", "--out", str(tmp_path), "--data-dir", generated_data_dir, "--seeds", "0",
            "--epochs", "1", "--methods", "sourceonly,dann", "--threads", "1", "--device", "cpu"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count(": new") == 2 * COLUMNS and "complete" not in out

    folders = sorted((tmp_path / "runs" / "peers").iterdir())
    assert len(folders) == 2 * COLUMNS
    records = {}
    for folder in folders:
        config = json.loads((folder / "config.json").read_text())
        metrics = json.loads((folder / "metrics.json").read_text())
        assert config["seed"] == 0 and config["data"]["seed"] == 0 and config["max_epochs"] == 1
        assert (config["optimizer"], config["lr"], config["betas"], config["batch_size"]) == ("Adam", 1e-4, [0.5, 0.9], 64)
        assert config["feature_layer"] == "encoder" and config["data"]["protocol"] == "adda"
        assert 0.0 <= metrics["target_accuracy"] <= 1.0 and metrics["wall_seconds"] > 0
        assert metrics["epochs"] == 1 and len(metrics["history"]["train_loss"]) == 1
        assert 0.0 <= metrics["label_free"]["pred_entropy"] <= 1.0 and np.isfinite(metrics["label_free"]["snd"])
        assert {"im", "bnm", "entropy", "class_ami"} <= set(metrics["label_free"])
        final = metrics["history"]["target"][-1]  # the evaluation report --selection rates
        assert final["target_accuracy"] == metrics["target_accuracy"] and final["im"] == metrics["label_free"]["im"]
        assert metrics["versions"]["skada"] == "0.6.0"
        records[folder.name] = metrics
    # the same images as a madda_rs run: generated digits keep all 600 training images under the ADDA protocol
    m2u = records["mnist2usps-standard-adda-skada-dann-e1-s0"]
    assert m2u["images"] == {"source_train": 600, "target_train": 600, "target_test": 300}
    # skada 0.6.0's default domain classifier outputs a constant, so DANN at defaults trains exactly as
    # source only (same seed, same first epoch; its domain loss is BCELoss's clamp, 100), what the
    # table's caption says, wherever its balanced loader takes no more steps than source only's
    # (one per 64 images of the larger domain)
    same_steps = 0
    for name, metrics in records.items():
        if "-dann-" in name and metrics["images"]["target_train"] // 64 <= metrics["images"]["source_train"] // 64:
            twin = records[name.replace("-dann-", "-sourceonly-")]
            assert metrics["target_accuracy"] == twin["target_accuracy"]
            assert metrics["history"]["train_loss"][0] == pytest.approx(twin["history"]["train_loss"][0] + 100)
            same_steps += 1
    assert same_steps == 3  # all but MNIST -> pooled USPS, whose 720 target images outnumber the source's 600

    markdown = (tmp_path / "peers.md").read_text()
    assert "Reduced budget: 1 epochs instead of 110" in markdown and "skada 0.6.0" in markdown
    lines = {line.split("|")[1].strip(): line for line in markdown.splitlines() if line.startswith("| ")}
    assert lines["DANN"].startswith("| DANN | skada | 1 epochs, lr 0.0001 | none | ") and lines["DANN"].count("(0)") == COLUMNS
    assert "| Source only (skada SourceOnly) | skada |" in markdown
    # Table 1's labels column: the short schedule was chosen on held-out labelled target training images
    assert lines["ADDA"] == ("| ADDA | madda_rs | short (40+20) | held-out target train (the short schedule) | "
                             "0.500 (0) | - | - | - | 7 |")
    with open(tmp_path / "peers.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == (2 + 5) * COLUMNS  # two peers, ADDA, M-ADDA paper, improved, labelfree, tuned-mnist-usps
    assert {r["method"] for r in rows if r["runs"] == "1"} == {"Source only (skada SourceOnly)", "DANN", "ADDA"}
    assert min(matplotlib.image.imread(tmp_path / "peers.png").shape[:2]) > 100

    # done runs are skipped; a run whose metrics.json is gone trains again, to the same result
    victim = tmp_path / "runs" / "peers" / "usps2mnist-pooled-adda-skada-dann-e1-s0"
    before = json.loads((victim / "metrics.json").read_text())
    (victim / "metrics.json").unlink()
    torch.manual_seed(12345)  # whatever the global generators hold, a run draws from its own seed alone
    np.random.seed(12345)
    assert main(args + ["--no-figures"]) == 0
    out = capsys.readouterr().out
    assert out.count("complete, skipped") == 2 * COLUMNS - 1 and out.count(": new") == 1
    after = json.loads((victim / "metrics.json").read_text())
    assert after["target_accuracy"] == before["target_accuracy"]
    assert after["history"]["train_loss"] == before["history"]["train_loss"]


def test_a_folder_holding_another_run_is_refused(tmp_path):
    run = plan_peers((0,), 3, ["dann"])[0]
    folder = tmp_path / run.name
    assert peer_state(folder, run) == "new"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**run.record(), "max_epochs": 4}))
    with pytest.raises(ValueError, match="max_epochs"):
        peer_state(folder, run)
    other_images = {**run.record(), "data": run.config.replace(usps_resize="stretch").to_dict()}
    (folder / "config.json").write_text(json.dumps(other_images))
    with pytest.raises(ValueError, match=r"data\.usps_resize"):
        peer_state(folder, run)
    moved = plan_peers((0,), 3, ["dann"], data_dir="/elsewhere", threads=2)[0]  # where it runs is not another run
    (folder / "config.json").write_text(json.dumps(moved.record()))
    (folder / "metrics.json").write_text("{}")
    assert peer_state(folder, run) == "complete"
    with pytest.raises(ValueError, match="unknown peer methods nope"):
        plan_peers((0,), 3, ["nope"])


@pytest.mark.filterwarnings("ignore:Implicit dimension choice for softmax")  # skada's own softmax
def test_the_sigmoid_domain_classifier_learns_where_skadas_default_cannot():
    pytest.importorskip("skada")
    from skada.deep.modules import DomainClassifier

    from madda_rs.experiments.peers import sigmoid_domain_classifier

    x = torch.randn(16, 500)
    for classifier, constant in ((DomainClassifier(500), True), (sigmoid_domain_classifier(500), False)):
        features = x.clone().requires_grad_(True)
        out = classifier(features)
        torch.nn.functional.binary_cross_entropy(out, torch.zeros(16)).backward()
        assert bool((out == 1).all()) is constant
        assert bool(features.grad.abs().max() == 0) is constant


def test_skadas_cdd_is_large_between_identical_domains_which_is_why_can_collapses():
    """CAN's contrastive domain discrepancy is intra-class MMD minus inter-class MMD, so between a
    sample and itself (clusters = labels) it is at most 0. skada 0.6.0 weights its source-source
    and target-target kernels by a class mask along one axis only (the outer product is meant)
    and divides the source-target term by its pair count squared, so the figure is large and
    positive (159 here; -11 with both fixed), minimising it scatters each class, and CAN at its
    defaults collapses (docs/results.md). When skada fixes it, rerun CAN."""
    pytest.importorskip("skada")
    from skada.deep.losses import cdd_loss
    from skada.deep.utils import SphericalKMeans

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(10, 500, generator=g) * 3
    labels = torch.arange(64) % 10
    features = centres[labels] + 0.1 * torch.randn(64, 500, generator=g)
    kmeans = SphericalKMeans(n_clusters=10, random_state=0,
                             initial_centroids=torch.nn.functional.normalize(centres, dim=1))
    kmeans.fit(features)
    assert bool((kmeans.predict(features) == labels).all())
    assert float(cdd_loss(labels, features, features.clone(), kmeans)) > 0


def test_without_skada_peers_is_refused_in_one_line_before_any_work(monkeypatch, generated_data_dir, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "skada", None)  # import skada now fails, installed or not
    monkeypatch.setitem(sys.modules, "skada.deep", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'madda-rs\[peers\]'"):
        require_skada()
    args = ["reproduce", "peers", "--out", str(tmp_path), "--data-dir", generated_data_dir, "--seeds", "0",
            "--methods", "dann"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"madda-rs: error: {MISSING_EXTRA}") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "peers.md").exists() and not (tmp_path / "runs").exists()
    # the table from runs already done needs no skada
    assert main(args + ["--no-run", "--no-figures"]) == 0
    assert "| DANN |" not in (tmp_path / "peers.md").read_text()  # no run of it is complete


def test_splits_choose_the_columns_run_and_a_bad_split_is_refused(tmp_path, capsys, monkeypatch):
    import madda_rs.experiments.peers as peers
    from madda_rs.cli import main

    with pytest.raises(SystemExit) as exit:  # a usage error, like any bad argument
        main(["reproduce", "peers", "--out", str(tmp_path), "--splits", "diagonal", "--no-run"])
    assert exit.value.code == 2 and "--splits: takes standard and/or pooled" in capsys.readouterr().err
    planned = []
    monkeypatch.setattr(peers, "check_runnable", lambda runs, out: planned.extend(runs) or [])
    monkeypatch.setattr(peers, "run_peers", lambda *a, **kw: None)
    assert main(["reproduce", "peers", "--out", str(tmp_path), "--splits", "standard", "--methods", "dann",
                 "--no-figures"]) == 0
    assert len(planned) == 2 * 3 and {r.config.usps_split for r in planned} == {"standard"}


def _fake_peer_run(out, run, accuracy):
    folder = out / "runs" / "peers" / run.name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(run.record()))
    (folder / "metrics.json").write_text(json.dumps({"target_accuracy": accuracy, "wall_seconds": 1.0,
                                                     "images": {"target_test": 100}, "history": {}}))


def test_peers_dev_chooses_each_methods_learning_rate_by_its_mean_over_the_development_tasks(tmp_path, capsys):
    runs = peers.plan_peers_dev((0,), 30, ["mcc", "dan", "mdd"], (1e-4, 1e-3), regs=())
    assert len(runs) == 3 * 2 * len(DEV_COLUMNS)
    assert all(r.config.tgt not in ("mnist", "usps") and r.config.resize_to_source for r in runs)
    # a synth-digits source (ten times the images) trains a tenth of the epochs, as madda_rs's rows do
    assert {r.epochs for r in runs if r.config.src == "synth-digits"} == {3}
    assert {r.epochs for r in runs if r.config.src != "synth-digits"} == {30}
    assert len({r.name for r in runs}) == len(runs)
    for i, run in enumerate(runs):
        task = DEV_COLUMNS.index(run.column)
        if run.peer.slug == "mcc":  # 1e-3 better on mean, though worse on one task
            acc = {1e-4: 0.5, 1e-3: 0.6 if task else 0.3}[run.lr]
        elif run.peer.slug == "dan":  # a tie keeps the smaller rate
            acc = 0.4
        else:  # mdd: one run missing, so no choice
            if run.lr == 1e-3 and task == 5:
                continue
            acc = 0.2
        _fake_peer_run(tmp_path, run, acc)
    assert main(["reproduce", "peers-dev", "--out", str(tmp_path), "--seeds", "0", "--methods", "mcc,dan,mdd",
                 "--no-run"]) == 0
    choice = json.loads((tmp_path / "peers-dev.json").read_text())
    assert {m: c["chosen_lr"] for m, c in choice["methods"].items()} == {"mcc": 1e-3, "dan": 1e-4, "mdd": None}
    assert choice["methods"]["mcc"]["rates"]["0.001"]["mean"] == pytest.approx(0.55)
    assert choice["methods"]["mcc"]["rates"]["0.001"]["worst"] == 0.3
    assert choice["labels_read"]["total"] == 100 * len(DEV_COLUMNS)
    assert not any(t.startswith(("MNIST →", "USPS →")) and ("→ MNIST" in t or "→ USPS" in t) for t in choice["tasks"])
    markdown = (tmp_path / "peers-dev.md").read_text()
    assert markdown.count("**chosen**") == 2 and "| MCC | 0.001 |" in markdown
    assert "600 labelled development-target test images" in markdown


def test_peers_dev_then_chooses_each_weight_at_the_chosen_rate_only_where_it_beats_skadas_default(tmp_path,
                                                                                                monkeypatch):
    monkeypatch.setattr(peers, "CHOSEN_LR", {"sourceonly": 1e-3, "mcc": 1e-3, "deepjdot": 1e-3})
    runs = peers.plan_peers_dev((0,), 30, ["sourceonly", "mcc", "deepjdot"], (1e-4, 1e-3), (0.1, 1.0, 10.0))
    weighted = [r for r in runs if r.reg is not None]
    # the weight step: every method with a weight, at its chosen rate, each weight on every task; not source only
    assert len(runs) == 3 * 2 * len(DEV_COLUMNS) + 2 * 3 * len(DEV_COLUMNS)
    assert {(r.peer.slug, r.lr) for r in weighted} == {("mcc", 1e-3), ("deepjdot", 1e-3)}
    assert len({r.name for r in runs}) == len(runs)
    jdot = next(r for r in weighted if r.peer.slug == "deepjdot" and r.reg == 0.1)
    assert jdot.name.endswith("-s0-lr0.001-reg0.1") and jdot.record()["method_args"] == {"reg_dist": 0.1}
    assert "method_args" not in next(r for r in runs if r.reg is None).record()  # committed records unchanged
    for run in runs:
        task = DEV_COLUMNS.index(run.column)
        if run.peer.slug == "mcc":  # 0.1 beats the default on the mean, though not on every task
            acc = {None: 0.6, 0.1: 0.75 if task else 0.5, 1.0: 0.6, 10.0: 0.3}[run.reg] - (run.lr == 1e-4) * 0.1
        elif run.peer.slug == "deepjdot":  # 0.1 beats the rate step's 0.4 but only ties the default run beside it
            acc = {None: 0.4 if run.lr == 1e-3 else 0.3, 0.1: 0.5, 1.0: 0.5, 10.0: 0.2}[run.reg]
        else:
            acc = 0.4
        _fake_peer_run(tmp_path, run, acc)
    assert main(["reproduce", "peers-dev", "--out", str(tmp_path), "--seeds", "0", "--methods",
                 "sourceonly,mcc,deepjdot", "--regs", "0.1,1,10", "--no-run"]) == 0
    methods = json.loads((tmp_path / "peers-dev.json").read_text())["methods"]
    assert {m: (c["chosen_lr"], c.get("chosen_reg")) for m, c in methods.items()} == \
        {"sourceonly": (1e-4, None), "mcc": (1e-3, 0.1), "deepjdot": (1e-3, None)}
    assert "weights" not in methods["sourceonly"] and methods["deepjdot"]["weight_argument"] == "reg_dist"
    assert methods["mcc"]["weights"]["0.1"]["mean"] == pytest.approx((0.5 + 5 * 0.75) / 6, abs=1e-4)
    markdown = (tmp_path / "peers-dev.md").read_text()
    chosen = [line for line in markdown.splitlines() if "**chosen**" in line]
    assert len(chosen) == 3 and any(line.startswith("| MCC | 0.001 | reg 0.1 |") for line in chosen)
    # with the weight step incomplete, a method keeps its rate and chooses no weight
    mcc_weighted = next(r for r in weighted if r.peer.slug == "mcc" and r.reg == 10.0)
    (tmp_path / "runs" / "peers" / mcc_weighted.name / "metrics.json").unlink()
    main(["reproduce", "peers-dev", "--out", str(tmp_path), "--seeds", "0", "--methods", "mcc", "--regs", "0.1,1,10",
          "--no-run"])
    mcc = json.loads((tmp_path / "peers-dev.json").read_text())["methods"]["mcc"]
    assert (mcc["chosen_lr"], mcc["chosen_reg"]) == (1e-3, None)


def test_a_weight_reaches_skadas_loss_under_the_methods_own_argument():
    pytest.importorskip("skada")
    from types import SimpleNamespace

    data = SimpleNamespace(class_names=[str(i) for i in range(10)], src_train=SimpleNamespace(shape=(1, 28, 28)))
    net = peers.build_net(peers.PEER_NAMES["deepjdot"], data, 1, 0, torch.device("cpu"), reg=0.1)
    assert net.get_params()["criterion__adapt_criterion"].reg_dist == 0.1
    net = peers.build_net(peers.PEER_NAMES["mcc"], data, 1, 0, torch.device("cpu"), reg=10.0)
    assert net.get_params()["criterion__reg"] == 10.0
    with pytest.raises(ValueError, match="has no adaptation weight"):
        peers.build_net(peers.PEER_NAMES["sourceonly"], data, 1, 0, torch.device("cpu"), reg=0.1)


def test_the_peers_table_trains_each_method_at_its_chosen_rate_and_says_what_chose_it(tmp_path, monkeypatch):
    monkeypatch.setattr(peers, "CHOSEN_LR", {"mcc": 1e-3})
    mcc, dan = plan_peers((0,), 110, ["mcc"])[0], plan_peers((0,), 110, ["dan"])[0]
    assert (mcc.lr, mcc.record()["lr"], mcc.name) == (1e-3, 1e-3, "mnist2usps-standard-adda-skada-mcc-e110-s0-lr0.001")
    assert (dan.lr, dan.name) == (1e-4, "mnist2usps-standard-adda-skada-dan-e110-s0")  # committed runs keep their names
    _fake_peer_run(tmp_path, mcc, 0.9)
    _fake_peer_run(tmp_path, dan, 0.8)
    markdown, _ = peers.build_peers_table([mcc, dan], tmp_path, (0,))
    assert "| MCC | skada | 110 epochs, lr 0.001 | dev targets only (the learning rate) | 0.900 (0) |" in markdown
    assert "| DAN | skada | 110 epochs, lr 0.0001 | none | 0.800 (0) |" in markdown
    assert "lr 0.0001 |" not in markdown.split("| MCC |")[1].split("| DAN |")[0]  # no unchosen run yet: no row
    # the method's runs at the presets' rate, from before the choice, stay in the table below its chosen row
    _fake_peer_run(tmp_path, plan_peers((0,), 110, ["mcc"], lrs=(1e-4,))[0], 0.7)
    markdown, _ = peers.build_peers_table([dan, mcc], tmp_path, (0,))
    rows = [line.split(" | ")[0] for line in markdown.splitlines() if "| skada |" in line]
    assert rows == ["| MCC", "| MCC, lr 0.0001", "| DAN"]
    assert "| MCC, lr 0.0001 | skada | 110 epochs, lr 0.0001 | none | 0.700 (0) |" in markdown


def test_the_peers_table_trains_a_chosen_weight_on_lenet_columns_and_keeps_the_default_run_as_its_own_row(
        tmp_path, monkeypatch):
    monkeypatch.setattr(peers, "CHOSEN_LR", {"mcc": 1e-3})
    monkeypatch.setattr(peers, "CHOSEN_REG", {"mcc": 0.1})
    mcc = plan_peers((0,), 110, ["mcc"])[0]
    assert (mcc.reg, mcc.name) == (0.1, "mnist2usps-standard-adda-skada-mcc-e110-s0-lr0.001-reg0.1")
    # chosen with LeNet: the colour table's backbones keep skada's default weight
    colour = plan_peers((0,), 55, ["mcc"], peers.TABLES["colour"].columns)
    assert {r.reg for r in colour} == {None}
    assert peers.chosen_by("mcc", colour[0].column, 1e-3) == "dev targets only (the learning rate)"
    _fake_peer_run(tmp_path, mcc, 0.9)
    _fake_peer_run(tmp_path, plan_peers((0,), 110, ["mcc"], regs=(None,))[0], 0.8)  # before the weight was chosen
    markdown, _ = peers.build_peers_table([mcc], tmp_path, (0,))
    assert "| MCC | skada | 110 epochs, lr 0.001, reg 0.1 | dev targets only (the learning rate and weight) | 0.900 (0) |" \
        in markdown
    assert "| MCC, lr 0.001, reg 1 | skada | 110 epochs, lr 0.001 | none | 0.800 (0) |" in markdown


def test_pretrained_columns_take_the_rate_chosen_on_the_pretrained_development_task(tmp_path, monkeypatch):
    monkeypatch.setattr(peers, "CHOSEN_LR", {"dann-sigmoid": 1e-3, "mcc": 1e-3})
    monkeypatch.setattr(peers, "CHOSEN_LR_PRETRAINED", {"dann-sigmoid": 1e-4})
    # the choice's own runs: the colour table's pretrained fashion-m column, at the table's 55 epochs
    dev = peers.plan_peers_dev_pretrained((0,), methods=["dann-sigmoid"])
    assert [(r.config.tgt, r.config.backbone, r.config.weights, r.epochs, r.lr) for r in dev] == \
        [("fashion-m", "efficientnet-lite0", "imagenet", 55, 1e-4), ("fashion-m", "efficientnet-lite0", "imagenet",
                                                                      55, 1e-3)]
    for run, acc in zip(dev, (0.8, 0.7)):
        _fake_peer_run(tmp_path, run, acc)
    assert main(["reproduce", "peers-dev-pretrained", "--out", str(tmp_path), "--seeds", "0", "--methods",
                 "dann-sigmoid", "--no-run"]) == 0
    choice = json.loads((tmp_path / "peers-dev-pretrained.json").read_text())
    assert choice["methods"]["dann-sigmoid"]["chosen_lr"] == 1e-4 and choice["labels_read"]["total"] == 100
    assert "pretrained development task" in (tmp_path / "peers-dev-pretrained.md").read_text()
    assert not (tmp_path / "peers-dev.json").exists()
    # beside the colour table: DANN at its pretrained choice on the pretrained columns alone, MCC (no
    # pretrained choice) at its LeNet one everywhere
    runs = plan_peers((0,), 55, ["dann-sigmoid", "mcc"], peers.TABLES["colour"].columns)
    rates = {(r.peer.slug, peers.pretrained(r.column)): r.lr for r in runs}
    assert rates == {("dann-sigmoid", True): 1e-4, ("dann-sigmoid", False): 1e-3, ("mcc", True): 1e-3,
                     ("mcc", False): 1e-3}
    done = [r for r in runs if r.peer.slug == "dann-sigmoid"][:1] + \
        [r for r in runs if r.peer.slug == "dann-sigmoid" and peers.pretrained(r.column) and r.config.tgt == "mnist-m"]
    for run in done:
        _fake_peer_run(tmp_path, run, 0.9)
    markdown, _ = peers.build_peers_table(runs, tmp_path, (0,), "colour")
    dann = [line for line in markdown.splitlines() if line.startswith("| DANN, sigmoid domain classifier |")]
    assert len(dann) == 2  # one row per choice, each naming the labels that made it
    assert "| 55 epochs, lr 0.001 | dev targets only (the learning rate) |" in dann[0]
    assert f"| 55 epochs, lr 0.0001 | {peers.PRETRAINED_CHOICE_LABELS} |" in dann[1]


def test_the_chosen_learning_rates_are_the_committed_choice():
    record = REPO / "results" / "peers-dev.json"
    if not record.is_file():
        pytest.skip("no committed learning-rate choice in this checkout")
    methods = json.loads(record.read_text())["methods"]
    assert peers.CHOSEN_LR == {m: c["chosen_lr"] for m, c in methods.items() if c["chosen_lr"]}
    assert peers.CHOSEN_REG == {m: c["chosen_reg"] for m, c in methods.items() if c.get("chosen_reg")}
    record = REPO / "results" / "peers-dev-pretrained.json"
    chosen = ({m: c["chosen_lr"] for m, c in json.loads(record.read_text())["methods"].items() if c["chosen_lr"]}
              if record.is_file() else {})
    assert peers.CHOSEN_LR_PRETRAINED == chosen


def test_learning_rates_are_refused_where_they_choose_nothing(tmp_path, capsys):
    assert main(["reproduce", "peers", "--out", str(tmp_path), "--lrs", "1e-3", "--no-run", "--no-figures"]) == 1
    err = capsys.readouterr().err
    assert "--lrs is for 'reproduce peers-dev'" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exit:
        main(["reproduce", "peers-dev", "--out", str(tmp_path), "--lrs", "1e-3,-1", "--no-run"])
    assert exit.value.code == 2 and "--lrs: expected positive numbers" in capsys.readouterr().err
    with pytest.raises(ValueError, match="learning rates must be positive"):
        plan_peers((0,), 3, ["dan"], lrs=(0.0,))
    # the adaptation weights likewise: chosen on the development tasks, never given to a table
    for table in ("peers", "peers-dev-pretrained"):
        assert main(["reproduce", table, "--out", str(tmp_path), "--regs", "0.1", "--no-run", "--no-figures"]) == 1
        err = capsys.readouterr().err
        assert "--regs is for 'reproduce peers-dev'" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ValueError, match="adaptation weights must be positive"):
        plan_peers((0,), 3, ["dan"], regs=(float("nan"),))


def test_peers_stand_beside_the_colour_table_on_its_backbones_and_tasks(tmp_path, capsys, monkeypatch):
    from madda_rs.experiments.reproduce import COLOUR_COLUMNS

    runs = plan_peers((0,), peers.PEER_TABLES["colour"], ["mcc"], COLOUR_COLUMNS)
    assert len(runs) == len(COLOUR_COLUMNS) and peers.PEER_TABLES["colour"] == 40 + 15
    effnet = [r for r in runs if r.config.backbone == "efficientnet-lite0"]
    assert len(effnet) == 3 and all(r.config.weights == "imagenet" and r.config.image_size == (64, 64) for r in effnet)
    assert all("-efficientnet-lite0-skada-mcc-" in r.name for r in effnet)
    synth = [r for r in runs if r.config.src == "synth-digits"]
    assert {(r.epochs, r.config.channels) for r in synth} == {(5, 3)}  # a tenth of the epochs, drawn in colour
    assert len({r.name for r in runs}) == len(runs) and all(r.config.resize_to_target for r in runs)
    _fake_peer_run(tmp_path, runs[0], 0.6)
    adda = next(r for r in plan("colour", (0,)) if r.config.method == "adda" and r.config.backbone == "resnet-cifar"
                and r.config.src == "mnist")
    folder = tmp_path / "runs" / adda.slug
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(adda.config.to_dict()))
    (folder / "metrics.json").write_text(json.dumps({"target_accuracy": 0.3, "wall_seconds": 2.0, "history": {}}))
    labelfree = next(r for r in plan("colour", (0,)) if r.config.preset == "labelfree"
                     and r.config.backbone == "resnet-cifar" and r.config.src == "mnist")
    folder = tmp_path / "runs" / labelfree.slug
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(labelfree.config.to_dict()))
    (folder / "metrics.json").write_text(json.dumps({"target_accuracy": 0.2, "wall_seconds": 2.0, "history": {},
                                                     "guard": "adaptation predicts 4 classes"}))
    monkeypatch.setattr(peers, "check_runnable", lambda runs, out: [])
    assert main(["reproduce", "peers", "--beside", "colour", "--out", str(tmp_path), "--seeds", "0", "--methods", "mcc",
                 "--no-run", "--no-figures"]) == 0
    markdown = (tmp_path / "peers-colour.md").read_text()
    assert not (tmp_path / "peers.md").exists()  # Table 1's peers table is left alone
    assert "beside Colour domains" in markdown and "carried to these backbones unchanged" in markdown
    lines = {line.split(" | ")[0]: line for line in markdown.splitlines() if line.startswith("| ")}
    assert lines["| MCC"].count(" | 0.600 (0) | ") == 1 and "MNIST → MNIST-M, resnet-cifar" in markdown
    assert lines["| ADDA"].startswith("| ADDA | madda_rs | dev (40+15) | none | 0.300 (0) |")
    # the guard's fallback is marked as in the colour table, and the caption gives the epochs once
    assert " | 0.200 (0) †1 | " in lines["| M-ADDA, preset labelfree (ours; chosen on the development tasks)"]
    assert "† N: in N of the cell's runs the guard" in markdown and "55 epochs (the M-ADDA rows' passes" in markdown
    # the fake runs record no machine: the caption says wall times compare within a CPU, and how many name theirs
    assert "Wall times are each run's own (the CPU recorded for 0 of the 3 runs)" in markdown
    assert "| M-ADDA, preset improved (ours) |" not in markdown  # not a row of the colour table
    assert main(["reproduce", "peers-dev", "--beside", "colour", "--out", str(tmp_path), "--no-run"]) == 1
    assert "--beside is for 'reproduce peers'" in capsys.readouterr().err
