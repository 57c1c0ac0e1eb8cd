"""The README is the front door: short, and every path its layout names and every page it links exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _layout_paths():
    block = README.split("## Layout", 1)[1].split("```", 2)[1]
    for line in block.strip().splitlines():
        names = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
        yield from (name.strip() for name in names.split(",") if name.strip())


def test_every_path_the_layout_names_exists():
    paths = list(_layout_paths())
    assert len(paths) > 20
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert not missing, missing


def test_every_linked_page_exists_and_the_readme_stays_short():
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README)
    assert links and all((ROOT / link).exists() for link in links), [x for x in links if not (ROOT / x).exists()]
    assert len(README.splitlines()) <= 300


def test_the_stream_table_lists_every_stream():
    from madda_rs.run.streams import SEED_STREAMS

    page = (ROOT / "docs" / "reproducibility.md").read_text()
    assert [name for name in SEED_STREAMS if f"| `{name}` |" not in page] == []


def test_the_readme_headline_matches_the_records_behind_it():
    """The improved preset's headline accuracies and run times are the Table 1 records', not a
    figure from one session without a record."""
    import json

    runs = ROOT / "results" / "runs"
    found = re.search(r"scores ([\d.]+) MNIST → USPS and ([\d.]+) USPS → MNIST", README)
    took = re.search(r"records\s+took (\d+)-(\d+) s a run", README)
    assert found and took
    seconds = []
    for task, shown in zip(("mnist2usps", "usps2mnist"), found.groups()):
        metrics = [json.loads(p.read_text()) for p in sorted(runs.glob(f"{task}-standard-adda-madda-improved-e80+30-s*/"
                                                                        "metrics.json"))]
        assert len(metrics) == 3
        assert f"{sum(m['target_accuracy'] for m in metrics) / 3:.3f}" == shown
        seconds += [m["wall_seconds"] for m in metrics]
    assert (int(took.group(1)), int(took.group(2))) == (int(min(seconds)), round(max(seconds)))


def test_every_mean_and_std_the_pages_quote_is_in_a_results_table():
    """A `mean ± std` in the README or a docs page that quotes the tables (not docs/results.md,
    whose `madda-rs report` blocks and the section measured at an older commit are their own
    records) is a cell of some table under results/: a quote goes stale when a seed lands."""
    tables = "\n".join(p.read_text() for p in (ROOT / "results").rglob("*.md"))
    pages = [ROOT / "README.md"] + [ROOT / "docs" / f"{name}.md" for name in
                                    ("label-free", "presets", "synth-digits", "own-images", "speed")]
    stale = [f"{page.name}:{page.read_text()[:m.start()].count(chr(10)) + 1}: {m.group(0)}"
             for page in pages for m in re.finditer(r"\d\.\d{3} ± \d\.\d{3}", page.read_text())
             if m.group(0) not in tables]
    assert not stale, stale
