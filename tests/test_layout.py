"""The package's layers, as docs/extending.md describes them: every import (lazy and type-only
imports too) points to the same layer or a lower one, and no modules import each other in a circle."""

import ast
from pathlib import Path

import madda_rs

ROOT = Path(madda_rs.__file__).resolve().parent

# Lowest first. A module may import its own layer and those below it, never above.
LAYERS = [
    # foundations: settings, the native kNN, plug-in import, file reading, losses, seeds, processes,
    # arithmetic precision
    {"config", "plugins", "native", "_core", "data.decode", "data.files", "losses", "run.streams",
     "run.processes", "run.precision"},
    # data: domains, folders, image sets, the sets of one run
    {"data", "data.folders", "data.images", "data.synth", "data.composite", "data.seven_segment", "data.hand",
     "data.domains", "data.geometry", "data.run_data"},
    # networks
    {"backbones", "backbones.*", "models"},
    # what the methods build on: scores on embeddings, predictors, the run loop and the run folder
    {"scores.label_free", "scores.predictors", "run.loop", "run.folder"},
    {"methods", "methods.*"},
    # entry points: whole runs, re-scoring, tune, inference, experiments, the CLI and package faces
    {"madda_rs", "__main__", "scores", "scores.evaluate", "training", "tune", "run", "inference", "inference.*",
     "experiments", "experiments.*", "cli"},
]


def _modules():
    mods = {}
    for f in ROOT.rglob("*.py"):
        parts = f.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1]) if parts[-1] == "__init__" else ".".join(parts)
        mods[name or "madda_rs"] = f
    return mods


def _imports(mods):
    """module -> the package modules it imports anywhere in its file."""
    edges = {}
    for name, f in mods.items():
        package = name if f.name == "__init__.py" else name.rpartition(".")[0]
        out = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = [] if package in ("", "madda_rs") else package.split(".")
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                elif (node.module or "").startswith("madda_rs"):
                    target = node.module.removeprefix("madda_rs").lstrip(".")
                else:
                    continue
                subs = [f"{target}.{a.name}".lstrip(".") for a in node.names]
                found = [s for s in subs if s in mods]
                # names taken from the package face itself (`from madda_rs import knn_predict`, the
                # extension `_core`) are the native API
                out |= set(found) if found else {target or "native"}
            elif isinstance(node, ast.Import):
                out |= {a.name.removeprefix("madda_rs").lstrip(".") or "native" for a in node.names
                        if a.name.startswith("madda_rs")}  # `import madda_rs`: its face, the native API
        edges[name] = {t for t in out if t in mods and t != name}
    return edges


def _layer(name):
    for i, layer in enumerate(LAYERS):
        if name in layer or f"{name.partition('.')[0]}.*" in layer:
            return i
    raise AssertionError(f"madda_rs.{name} is in no layer of tests/test_layout.py: place it")


def test_every_import_points_to_its_own_layer_or_below():
    edges = _imports(_modules())
    upward = [f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
              for a, targets in sorted(edges.items()) for b in sorted(targets) if _layer(b) > _layer(a)]
    assert not upward, "\n".join(upward)


def test_no_modules_import_each_other_in_a_circle():
    edges = _imports(_modules())
    state, stack, circles = {}, [], []

    def visit(v):
        state[v] = "open"
        stack.append(v)
        for w in sorted(edges[v]):
            if state.get(w) == "open":
                circles.append(stack[stack.index(w):] + [w])
            elif w not in state:
                visit(w)
        stack.pop()
        state[v] = "done"

    for v in sorted(edges):
        if v not in state:
            visit(v)
    assert not circles, "\n".join(" -> ".join(c) for c in circles)
