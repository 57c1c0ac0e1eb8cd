"""`madda-rs reproduce`: the run plan of each table, skipping and resuming runs, and a --quick
table with its figures on small generated digits."""

import csv
import json

import matplotlib.image
import pytest

from madda_rs.cli import main
from madda_rs.experiments.reproduce import TABLES, plan, run_state, slug


def test_plans_share_runs_between_tables_and_name_every_setting():
    t1, t3 = plan("table1", (0, 1, 2)), plan("table3", (0, 1, 2))
    # ADDA, M-ADDA paper, official, improved, labelfree, tuned-mnist-usps (source-only rows reuse runs)
    assert len(t1) == 6 * 4 * 3
    assert len({r.slug for r in t1} | {r.slug for r in t3}) == len(t1) + 2 * 4 * 3  # "both" is Table 1's run
    paper = next(r for r in t1 if r.slug == "usps2mnist-pooled-adda-madda-paper-e40+20-s1")
    assert (paper.config.src, paper.config.usps_split, paper.config.seed) == ("usps", "pooled", 1)
    assert ("M-ADDA, preset paper", "USPS → MNIST, pooled USPS split") in paper.cells
    assert ("Source only (triplet model, kNN)", "USPS → MNIST, pooled USPS split") in paper.cells
    full = plan("table2", (0,), paper_seeds=(0,))
    assert {r.config.protocol for r in full} == {"full"}
    assert {r.schedule for r in full} == {"short", "improved", "labelfree", "tuned-mnist-usps", "paper"}
    assert all(slug(r.config, r.schedule) == r.slug for r in full)
    with pytest.raises(ValueError, match="unknown table"):
        plan("table4", (0,))


def test_the_ablation_takes_out_one_ingredient_per_row_and_shares_table_1s_runs():
    ablation, t1 = plan("ablation", (0, 1, 2)), plan("table1", (0, 1, 2))
    assert len({r.slug for r in ablation}) == len(ablation) == 8 * 2 * 3  # improved, 6 ablations, paper
    shared = {r.slug for r in ablation} & {r.slug for r in t1}
    assert len(shared) == 2 * 2 * 3  # improved and paper, standard split
    full = {r.config.src: r.config for r in ablation if r.slug.endswith("madda-improved-e80+30-s0")}
    for run in ablation:
        if run.config.preset != "improved" or run.config.seed != 0:
            continue
        base = full[run.config.src].to_dict()
        differ = {k for k, v in run.config.to_dict().items() if base[k] != v and k != "overridden"}
        assert len(differ) <= 1, (run.slug, differ)  # one ingredient out, the rest kept
        assert (run.slug.endswith("improved-e80+30-s0")) == (not differ)
    assert {r.schedule for r in ablation if r.config.preset == "improved"} == {"improved"}  # its own default
    with_paper = plan("table1", (0,), paper_seeds=(0,))
    assert not any(r.schedule == "paper" and r.config.preset == "improved" for r in with_paper)


def test_the_synth_table_gives_its_rows_a_tenth_of_the_source_epochs_and_no_paper_columns(tmp_path):
    from madda_rs.config import PRESETS
    from madda_rs.experiments.reproduce import build_table

    runs = plan("synth", (0, 1, 2))
    # labelfree, tuned-mnist-usps and improved (their source-only rows reuse the runs) x 2 targets
    assert len(runs) == 3 * 2 * 3
    assert {(r.config.src, r.config.tgt) for r in runs} == {("synth-digits", "mnist"), ("synth-digits", "usps")}
    for run in runs:
        preset = PRESETS[run.config.preset]
        assert (run.config.epochs_source, run.config.epochs_target) == \
            (preset["epochs_source"] // 10, preset["epochs_target"])
    markdown, _ = build_table("synth", runs, tmp_path)
    assert "SYNTH-DIGITS → MNIST |" in markdown and "USPS split" not in markdown.split("SYNTH-DIGITS → USPS")[0]
    assert "paper:" not in markdown


def test_the_command_line_offers_every_table():
    from madda_rs.cli import TABLE_NAMES

    assert TABLE_NAMES == tuple(TABLES)


def test_a_folder_holding_another_run_is_refused(tmp_path):
    run = next(r for r in plan("table1", (0,)) if r.config.method == "madda")
    assert run_state(tmp_path, run.config) == "new"
    (tmp_path / "config.json").write_text(json.dumps(run.config.replace(seed=5).to_dict()))
    with pytest.raises(ValueError, match="seed"):
        run_state(tmp_path, run.config)
    (tmp_path / "config.json").write_text(json.dumps(run.config.replace(threads=1, device="cpu").to_dict()))
    assert run_state(tmp_path, run.config) == "new"  # where and how it ran does not make it another run
    older = run.config.to_dict()
    del older["augment"], older["guard"]  # saved before these settings existed: they take the preset's value
    (tmp_path / "config.json").write_text(json.dumps(older))
    assert run_state(tmp_path, run.config) == "new"


def test_quick_table_writes_markdown_csv_and_figures_then_skips_finished_runs(generated_data_dir, tmp_path, capsys):
    # Table 2 (ADDA, M-ADDA paper, improved, labelfree, tuned-mnist-usps), its standard-split columns only: the
    # pooled ones stay '-'. On generated digits "full" is 600 images
    args = ["reproduce", "table2", "--quick", "--splits", "standard", "--out", str(tmp_path), "--data-dir",
            generated_data_dir, "--quiet", "--tsne-points", "40"]
    assert main(args + ["--device", "auto", "--threads", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count(": new") == 10 and "complete" not in out
    markdown = (tmp_path / "table2.md").read_text()
    for row in TABLES["table2"].rows:
        line = next(x for x in markdown.splitlines() if x.startswith(f"| {row.label} | quick (1+2) |"))
        cells = line.split(" | ")[3:7]  # standard, standard, pooled, pooled
        assert "(0)" in cells[0] and "(0)" in cells[1] and cells[2] == cells[3] == "-"
    with open(tmp_path / "table2.csv") as f:
        rows = list(csv.DictReader(f))
    ran = [r for r in rows if r["runs"] != "0"]
    assert len(rows) == 7 * 4 and {r["task"] for r in ran} == {c.label for c in TABLES["table2"].columns[:2]}
    assert len(ran) == 7 * 2 and all(0.0 <= float(r["mean"]) <= 1.0 for r in ran)
    figures = sorted((tmp_path / "figures" / "table2").rglob("*.png"))
    assert {p.parent.name for p in figures} == {"mnist2usps-standard", "usps2mnist-standard"}
    assert sum(p.name == "curves.png" for p in figures) == 2
    assert sum(p.name.endswith("-confusion.png") for p in figures) == 10
    assert [p.name for p in figures if p.name.endswith("-tsne.png")] == \
        [f"{task}-standard-full-madda-paper-e1+2-s0-quick-tsne.png" for task in ("mnist2usps", "usps2mnist")]
    for p in figures:
        assert min(matplotlib.image.imread(p).shape[:2]) > 100

    # a finished run is skipped; a run cut short (metrics.json gone, checkpoint kept) resumes, here on
    # another device setting and thread count: where and how a run executes may change on resume
    victim = tmp_path / "runs" / "mnist2usps-standard-full-madda-paper-e1+2-s0-quick"
    (victim / "metrics.json").unlink()
    assert main(args + ["--no-figures", "--no-run"]) == 0  # the table from what is complete, nothing trained
    assert ": resume" not in capsys.readouterr().out and not (victim / "metrics.json").is_file()
    assert main(args + ["--no-figures", "--device", "cpu", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("complete, skipped") == 9 and out.count(": resume") == 1
    assert json.loads((victim / "metrics.json").read_text())["threads"] == 1
    with pytest.raises(SystemExit) as exit:
        main(args[:3] + ["--splits", "both"] + args[5:])
    assert exit.value.code == 2 and "--splits: takes standard and/or pooled" in capsys.readouterr().err


def test_tables_say_which_labels_chose_each_row_and_mark_the_guards_fallbacks(tmp_path):
    from madda_rs.config import PRESET_TARGET_LABELS
    from madda_rs.experiments.reproduce import SHORT_SCHEDULE_LABELS, build_table

    runs = plan("table1", (0,))
    improved = next(r for r in runs if r.config.preset == "improved" and r.config.src == "mnist"
                    and r.config.usps_split == "standard")
    paper = next(r for r in runs if r.config.preset == "paper" and r.config.method == "madda"
                 and r.config.src == "mnist" and r.config.usps_split == "standard")
    for run, guard in ((improved, "adaptation predicts 3 classes on the target, the source model 10"), (paper, None)):
        folder = tmp_path / "runs" / run.slug
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps(run.config.to_dict()))
        (folder / "metrics.json").write_text(json.dumps({"target_accuracy": 0.5, "source_only_accuracy": 0.4,
                                                         "guard": guard, "wall_seconds": 1.0, "history": {}}))
    markdown, rows = build_table("table1", runs, tmp_path)
    lines = {line.split("|")[1].strip(): line for line in markdown.splitlines() if line.startswith("| M-ADDA")}
    assert f"| {PRESET_TARGET_LABELS['improved']} | 0.500 (0) †1 |" in lines["M-ADDA, preset improved (ours)"]
    # the paper preset reads no label, but the short schedule was chosen on held-out target training images
    assert f"| {SHORT_SCHEDULE_LABELS} | 0.500 (0) |" in lines["M-ADDA, preset paper"]
    assert "† N: in N of the cell's runs the guard" in markdown
    assert {r["target_labels"] for r in rows if r["schedule"].startswith("short") and r["runs"]} == {SHORT_SCHEDULE_LABELS}
    assert {r["target_labels"] for r in rows} >= {PRESET_TARGET_LABELS[p] for p in
                                                  ("improved", "labelfree", "tuned-mnist-usps")}
    at_paper = build_table("table1", plan("table1", (0,), "paper"), tmp_path)[1]
    assert {r["target_labels"] for r in at_paper if r["method"] == "M-ADDA, preset paper"} == {"none"}
    assert sum(r["guarded_runs"] for r in rows) == 1


def test_the_pretrained_development_task_rates_one_change_at_a_time_on_fashion_labels_only(tmp_path):
    runs = plan("devtasks-pretrained", (0,))
    assert {(r.config.src, r.config.tgt, r.config.backbone, r.config.weights) for r in runs} == \
        {("fashion-mnist", "fashion-m", "efficientnet-lite0", "imagenet")}  # no MNIST or USPS label rates a row
    colour = {r.slug: r.config for r in plan("colour", (0,))}
    shared = [r for r in runs if r.slug in colour]
    assert {r.config.method + "-" + r.config.preset for r in shared} == {"adda-paper", "madda-paper", "madda-labelfree"}
    assert all(colour[r.slug] == r.config for r in shared)  # the colour table's own runs, not copies

    def changes(config, base):
        return [k for k, v in config.to_dict().items() if base.to_dict()[k] != v and k != "overridden"]

    candidates = [r.config for r in runs if r.slug not in colour]
    for config in candidates:  # the paper's recipe, or another row's, with exactly one setting changed
        assert any(len(changes(config, r.config)) == 1 for r in runs if r.config.method == "madda"), config
    assert len(runs) == 13 and len({r.slug for r in runs}) == 13
    # its table builds from what is complete, into a folder that does not exist yet
    assert main(["reproduce", "devtasks-pretrained", "--seeds", "0", "--no-run", "--no-figures",
                 "--out", str(tmp_path / "new")]) == 0
    assert "fashion-m's labels" in (tmp_path / "new" / "devtasks-pretrained.md").read_text()


@pytest.mark.parametrize("label", ["PRETRAINED_CHOICE_LABEL", "PRETRAINED_CHOICE_2_LABEL"])
def test_the_recipe_chosen_on_the_pretrained_task_runs_on_pretrained_columns_and_says_what_chose_it(tmp_path, label):
    from madda_rs.experiments import reproduce
    from madda_rs.experiments.reproduce import build_table

    label = getattr(reproduce, label)
    row = next(r for r in TABLES["colour"].rows if r.label == label)
    runs = [r for r in plan("colour", (0,)) if (label, r.cells[0][1]) in r.cells]
    assert len(runs) == 3 and all(r.config.weights == "imagenet" for r in runs)  # no resnet-cifar cell
    dev = {r.slug for r in plan("devtasks-pretrained", (0,))}
    assert sum(r.slug in dev for r in runs) == 1  # its fashion cell is the run that chose it
    run = next(r for r in runs if r.config.src == "mnist")
    folder = tmp_path / "runs" / run.slug
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(run.config.to_dict()))
    (folder / "metrics.json").write_text(json.dumps({"target_accuracy": 0.5, "wall_seconds": 1.0, "history": {}}))
    markdown, _ = build_table("colour", plan("colour", (0,)), tmp_path)
    line = next(x for x in markdown.splitlines() if x.startswith(f"| {row.label} |"))
    assert "| fashion-m test (the dev task), 10,000 |" in line and line.count(" | 0.500 (0)") == 1
    assert line.split(" | ")[3:6] == ["-", "-", "-"]  # the resnet-cifar columns


def test_superseded_rows_stay_in_the_table_but_reproduce_runs_none_of_them(tmp_path, monkeypatch):
    import madda_rs.training
    from madda_rs.experiments import reproduce

    trained = []
    monkeypatch.setattr(madda_rs.training, "train", lambda config, folder, *a, **kw: trained.append(folder))
    runs = plan("colour", (0, 1))
    kept = [r for r in runs if r.on_record]
    assert {label for r in kept for label, _ in r.cells} == {reproduce.TUNED_LABEL, reproduce.PRETRAINED_CHOICE_LABEL}
    current = next(r for r in runs if r.config.method == "adda")
    done = kept[0]  # a superseded run that finished: the table keeps showing it
    (tmp_path / "runs" / done.slug).mkdir(parents=True)
    (tmp_path / "runs" / done.slug / "config.json").write_text(json.dumps(done.config.to_dict()))
    (tmp_path / "runs" / done.slug / "metrics.json").write_text(
        json.dumps({"target_accuracy": 0.25, "wall_seconds": 1.0, "history": {}}))
    states = []
    reproduce.run_all(kept + [current], tmp_path, None, lambda i, run, state: states.append(state))
    assert trained == [str(tmp_path / "runs" / current.slug)]
    assert states == ["complete"] + ["on record only"] * (len(kept) - 1) + ["new"]
    markdown, _ = reproduce.build_table("colour", runs, tmp_path)
    assert "0.250 (0)" in next(x for x in markdown.splitlines() if x.startswith(f"| {done.cells[0][0]} |"))


def test_stage_2_rows_adapt_the_source_model_of_their_source_row(generated_data_dir, tmp_path, monkeypatch, capsys):
    from dataclasses import replace

    from madda_rs.experiments import reproduce

    # devtasks-stage2's shape on generated digits: one source-only run per task, two rows adapting it
    real = TABLES["devtasks-stage2"]
    small = replace(real, rows=real.rows[:3], columns=TABLES["table1"].columns[:2])
    monkeypatch.setitem(reproduce.TABLES, "devtasks-stage2", small)
    runs = plan("devtasks-stage2", (0,))
    source_runs = {r.slug for r in runs if r.config.source_only}
    assert len(source_runs) == 2 and all(s.endswith("-sourceonly-e40+15-s0") for s in source_runs)
    assert all(r.source_run in source_runs and r.slug.endswith("-sharedsource") for r in runs if r.source_run)
    args = ["reproduce", "devtasks-stage2", "--quick", "--out", str(tmp_path), "--data-dir", generated_data_dir,
            "--quiet", "--no-figures", "--device", "cpu", "--threads", "2"]
    assert main(args) == 0
    assert capsys.readouterr().out.count(": new") == 6
    for run in plan("devtasks-stage2", (0,), "quick"):
        metrics = json.loads((tmp_path / "runs" / run.slug / "metrics.json").read_text())
        if run.source_run is None:
            assert metrics["source_from"] is None and not metrics["history"]["target"]
            continue
        source = json.loads((tmp_path / "runs" / run.source_run / "metrics.json").read_text())
        assert metrics["source_from"]["run"] == str((tmp_path / "runs" / run.source_run).resolve())
        assert metrics["source_only_accuracy"] == source["source_only_accuracy"]  # the same source model
        assert metrics["history"]["source"] == source["history"]["source"]
    votes = (tmp_path / "devtasks-stage2-votes.md").read_text()
    assert "2 development tasks, 2 candidate runs each" in votes and "each with its own stage 1" in votes
    assert main(args) == 0 and capsys.readouterr().out.count("complete, skipped") == 6
