"""Side-by-side figure for the fewstep-x4 model card and the README.

    python scripts/make_fewstep_x4_figure.py --data ../shared/data/photos/eval -o docs/fewstep_x4_comparison.png

For each photo: the LR exactly as `fewstep eval --degradation resshift-test` makes it (seed 0),
then bicubic, Real-ESRGAN x4plus, fewstep-x4 and the HR; below each image two 2x zooms (nearest
neighbour): the 128x128 window where the HR has the most edge energy (red box) and the one where it
has the least (blue box: flat areas, where fewstep-x4 restores texture). Windows are chosen
automatically, so none is hand-picked.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

DEFAULT_PHOTOS = ("flower.png", "seeding_by_Clements_Engelhardt.png", "Bridge_by_Sander_Klootwijk.png")
COLUMNS = ("LR (nearest)", "bicubic", "Real-ESRGAN x4plus", "fewstep-x4 (default)", "HR")


def edge_windows(hr: np.ndarray, size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Top-left corners of the size x size windows (stride size/4) with the largest and the smallest
    gradient energy."""
    y = hr.astype(np.float64).mean(2)
    g = np.abs(np.diff(y, axis=0))[:, :-1] + np.abs(np.diff(y, axis=1))[:-1, :]
    step = size // 4
    energy = {(top, left): float(g[top:top + size, left:left + size].sum())
              for top in range(0, g.shape[0] - size + 1, step) for left in range(0, g.shape[1] - size + 1, step)}
    return max(energy, key=energy.get), min(energy, key=energy.get)


def main() -> None:
    from PIL import Image, ImageDraw

    import fewstep
    from fewstep.eval.datasets import Dataset, load_pair

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--photos", nargs="*", default=list(DEFAULT_PHOTOS))
    ap.add_argument("--degradation", default="resshift-test")
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--cell", type=int, default=256, help="displayed size of each full image")
    args = ap.parse_args()

    ups = {"bicubic": fewstep.load("bicubic"), "realesrgan": fewstep.load("realesrgan-x4plus"),
           "x4": fewstep.load("fewstep-x4")}
    ds = Dataset(name=f"{args.data.name}/{args.degradation}", hr_dir=args.data, degradation=args.degradation)
    cell, label_h = args.cell, 18
    rows = []
    for name in args.photos:
        lr, hr, seed = load_pair(ds, args.data / name, scale=4, seed=0)
        outs = []
        for key in ("bicubic", "realesrgan", "x4"):
            outs.append(ups[key].upscale(lr, seed=seed))
        lr_big = np.asarray(Image.fromarray(lr).resize((hr.shape[1], hr.shape[0]), Image.NEAREST))
        images = [lr_big, *outs, hr]
        zoom = 128
        windows = list(zip(edge_windows(hr, zoom), ((255, 0, 0), (0, 90, 255))))
        full_row, zoom_rows = [], [[] for _ in windows]
        for img in images:
            im = Image.fromarray(img).resize((cell, cell), Image.LANCZOS)
            d = ImageDraw.Draw(im)
            s = cell / img.shape[0]
            for k, ((top, left), colour) in enumerate(windows):
                d.rectangle([left * s, top * s, (left + zoom) * s, (top + zoom) * s], outline=colour)
                crop = img[top:top + zoom, left:left + zoom]
                zoom_rows[k].append(Image.fromarray(crop).resize((cell, cell), Image.NEAREST))
            full_row.append(im)
        rows += [full_row, *zoom_rows]
    width = cell * len(COLUMNS)
    canvas = Image.new("RGB", (width, label_h + cell * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for j, title in enumerate(COLUMNS):
        draw.text((j * cell + 4, 3), title, fill=(0, 0, 0))
    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            canvas.paste(im, (j * cell, label_h + i * cell))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out, optimize=True)
    print(f"wrote {args.out} ({canvas.size[0]}x{canvas.size[1]})")


if __name__ == "__main__":
    main()
