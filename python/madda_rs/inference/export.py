"""A folder that labels images without madda_rs's training code (``madda-rs export``).

    DIR/encoder.pt               the scored model (target.pt) as TorchScript: uint8 images scaled to [-1, 1] in,
                                 embeddings (or, for ADDA, logits) out
    DIR/encoder.onnx             the same model as ONNX, when the onnx package is installed; its outputs are
                                 checked against torch's with onnxruntime when that is installed too
    DIR/source_embeddings.npy    what the kNN vote searches, and their labels
    DIR/source_labels.npy
    DIR/run.json                 class names, the images' geometry and scaling, k, the predictor
    DIR/predict.py               python DIR/predict.py INPUT... --out FILE (torch, NumPy, Pillow, madda_rs's kNN)
    DIR/decode.py                reading image files, which predict.py imports
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from ..data import decode
from . import standalone
from .predict import load_run

# ONNX outputs may differ from torch's by float rounding in another kernel order
ONNX_TOLERANCE = 1e-4


def export_run(run_dir: os.PathLike | str, out: os.PathLike | str, *, overwrite: bool = False) -> Dict[str, Any]:
    """Write the shippable folder `out` for the run in `run_dir`; returns what run.json holds.
    An `out` that exists and is not empty is refused unless `overwrite`."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ValueError(f"--out {out} exists and is not empty; choose another folder or pass --overwrite")
    run = load_run(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, *run.shape)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, yet what predict.py loads
        traced = torch.jit.trace(run.model.eval(), example)
    traced.save(str(out / "encoder.pt"))
    shutil.copyfile(Path(run_dir) / "source_embeddings.npy", out / "source_embeddings.npy")
    shutil.copyfile(Path(run_dir) / "source_labels.npy", out / "source_labels.npy")
    shutil.copyfile(standalone.__file__, out / "predict.py")
    shutil.copyfile(decode.__file__, out / "decode.py")
    info: Dict[str, Any] = {
        "class_names": run.class_names, "shape": list(run.shape), "k": run.k, "predictor": run.info["predictor"],
        "scaling": "pixel / 255 * 2 - 1, after conversion to grey (1 channel) or RGB (3) and a bilinear resize",
        "from_run": str(Path(run_dir).resolve()), "onnx": _export_onnx(run.model, example, out),
    }
    (out / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def _export_onnx(model: torch.nn.Module, example: torch.Tensor, out: Path) -> Optional[Dict[str, Any]]:
    """encoder.onnx and how it compares with torch, or None when onnx is not installed."""
    if importlib.util.find_spec("onnx") is None:
        return None
    path = out / "encoder.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based exporter: no onnxscript needed
        torch.onnx.export(model.eval(), (example,), str(path), input_names=["images"], output_names=["outputs"],
                          dynamic_axes={"images": {0: "n"}, "outputs": {0: "n"}}, dynamo=False)
    report: Dict[str, Any] = {"file": path.name, "checked": False}
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        probe = torch.rand(16, *example.shape[1:]) * 2 - 1
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {"images": probe.numpy()})[0]
        with torch.no_grad():
            want = model(probe).numpy()
        diff = float(np.abs(got - want).max())
        if diff > ONNX_TOLERANCE * max(1.0, float(np.abs(want).max())):
            raise RuntimeError(f"the ONNX export differs from torch by {diff:g} on random images")
        report.update(checked=True, max_abs_difference=diff)
    return report


__all__ = ["export_run"]
