"""Choose fewstep-x4's sampling strengths on *training* photos (never the eval photos).

    python scripts/tune_fewstep_x4.py --photos ../shared/data/photos/train -o reports/fewstep_x4/tuning.md

Tuning set: 384x384 centre crops of every third training photo, degraded with `resshift-test` and
`bicubic` (seeded per file, as `fewstep eval` does). For each crop it runs stage 1 (y) and the
refiner at full strength (r) once; every candidate (strength, flat_strength, flat_tau) is then the
blend y + S * (r - y), with S = `two_stage.strength_map` of y (the latent decodes linearly, so this is
what the model computes, up to the clamp). Metrics as `fewstep eval` computes them.

Rule (fixed before looking at the eval photos): among candidates whose PSNR-Y is at most 0.3 dB
below stage 1's and whose edge recovery is at least 0.005 above stage 1's on *both* degradations,
take the one with the largest mean NIQE reduction.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

GRID = {"strength": (0.0, 0.05, 0.1, 0.15), "flat_strength": (None, 0.5, 0.75, 1.0), "flat_tau": (1.0, 2.0, 3.0, 4.0)}
MAX_PSNR_COST, MIN_EDGE_GAIN = 0.3, 0.005


def make_crops(photos: Path, out: Path, size: int = 384, every: int = 3) -> Path:
    from PIL import Image

    from fewstep.imageio import list_folder

    out.mkdir(parents=True, exist_ok=True)
    for p in list_folder(photos)[::every]:
        im = Image.open(p).convert("RGB")
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        im.crop((left, top, left + size, top + size)).save(out / (p.stem + ".png"))
    return out


def main() -> None:
    from tqdm import tqdm

    import fewstep
    from fewstep.eval.datasets import load_pair, make_datasets
    from fewstep.imageio import list_folder
    from fewstep.metrics import get_metric
    from fewstep.resshift.two_stage import strength_map

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=Path, default=ROOT.parent / "shared" / "data" / "photos" / "train")
    ap.add_argument("--crops", type=Path, default=ROOT.parent / "scratch" / "tune_x4")
    ap.add_argument("-o", "--out", type=Path, default=None, help="write the table (Markdown) here too")
    args = ap.parse_args()

    crops = make_crops(args.photos, args.crops)
    full = fewstep.load("fewstep-x4", strength=1.0, flat_strength=-1)  # the refiner as trained
    refiner = full.refiner
    metrics = {n: get_metric(n, **({"crop_border": 4} if n != "niqe" else {})) for n in ("psnr_y", "niqe", "edge_recovery")}
    data = []  # (dataset, hr, y, r) as float CHW in [0, 1]
    for ds in make_datasets([crops], ["resshift-test", "bicubic"]):
        for p in tqdm(list_folder(ds.hr_dir), desc=ds.name):
            lr, hr, seed = load_pair(ds, p, scale=4, seed=0)
            x = torch.from_numpy(lr).permute(2, 0, 1)[None].float() / 255
            y = full.stage1.restore(x, seed=seed)
            r = full.refine(y, seed=seed)  # what full.restore(x) returns, without running stage 1 again
            data.append((ds.degradation, hr, y, r))

    def score(blend) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, list]] = {}
        for deg, hr, y, r in data:
            img = np.round(blend(y, r)[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            row = out.setdefault(deg, {m: [] for m in metrics})
            for m, f in metrics.items():
                row[m].append(f(img, hr) if f.needs_reference else f(img))
        return {d: {m: float(np.mean(v)) for m, v in row.items()} for d, row in out.items()}

    def candidate(strength, flat_strength, flat_tau):
        def blend(y, r):
            if flat_strength is None:
                return y + strength * (r - y)
            return y + strength_map(y * 2 - 1, strength, flat_strength, flat_tau, refiner.flat_sigma) * (r - y)
        return blend

    base = score(lambda y, r: y)
    lines = ["| strength | flat_strength | flat_tau | " + " | ".join(f"{d} PSNR-Y / NIQE / edge" for d in base) + " | passes |",
             "|---:|---:|---:|" + "---|" * len(base) + "---|",
             "| stage 1 | | | " + " | ".join(f"{b['psnr_y']:.3f} / {b['niqe']:.3f} / {b['edge_recovery']:.3f}" for b in base.values()) + " | |"]
    best, best_gain = None, -np.inf
    combos = [(s, None, None) for s in GRID["strength"]]
    combos += [(s, f, t) for s, f, t in itertools.product(*GRID.values()) if f is not None and f > s]
    for s, f, t in tqdm(combos, desc="candidates"):
        res = score(candidate(s, f, t))
        ok = all(res[d]["psnr_y"] >= base[d]["psnr_y"] - MAX_PSNR_COST
                 and res[d]["edge_recovery"] >= base[d]["edge_recovery"] + MIN_EDGE_GAIN for d in base)
        gain = float(np.mean([base[d]["niqe"] - res[d]["niqe"] for d in base]))
        if ok and gain > best_gain:
            best, best_gain = (s, f, t), gain
        lines.append(f"| {s} | {'' if f is None else f} | {'' if t is None else t} | "
                     + " | ".join(f"{r['psnr_y']:.3f} / {r['niqe']:.3f} / {r['edge_recovery']:.3f}" for r in res.values())
                     + f" | {'yes' if ok else ''} |")
    lines.append("")
    lines.append(f"chosen (largest mean NIQE reduction among those that pass): strength={best[0]}, "
                 f"flat_strength={best[1]}, flat_tau={best[2]} (NIQE -{best_gain:.3f})" if best else "no candidate passes")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("# fewstep-x4 sampling tuning (scripts/tune_fewstep_x4.py)\n\n" + __doc__.split("\n\n", 1)[1]
                            + "\n" + text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
