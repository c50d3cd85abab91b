"""Rebuild examples/*.png from ../shared/data/photos/eval (see examples/README.md)."""

from pathlib import Path

import numpy as np
from PIL import Image

from fewstep.degrade import degrade, imresize

EVAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "photos" / "eval"
OUT = Path(__file__).resolve().parents[1] / "examples"

if __name__ == "__main__":
    seeding = np.asarray(Image.open(EVAL / "seeding_by_Clements_Engelhardt.png").convert("RGB"))
    Image.fromarray(imresize(seeding, 0.5)).save(OUT / "seeding_256.png")
    flower = np.asarray(Image.open(EVAL / "flower.png").convert("RGB"))
    Image.fromarray(degrade(flower, preset="resshift-test", scale=4, seed=0)).save(OUT / "flower_lr128.png")
