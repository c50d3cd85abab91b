"""SkipDiff evaluation on the eval photos: table + perception-distortion plot -> reports/skipdiff/.

    python scripts/skipdiff_eval.py [--weights runs/sr3_small/export/sr3_small.safetensors]
        [--policy-dir runs/skipdiff_policy] [--crop 128] [--limit 9] [--threads 1] [--quiet]

Rows (SR3 model, x4, MATLAB-bicubic LR of 128² crops: by default the most textured of a 3x3 grid of
windows per photo): bicubic; plain ancestral sampling with
10 (re-spaced cosine grid), 19 (= CSA + all 10 fine steps) and 100 (native) steps; SkipDiff with
every fixed m = 1..10 (reset mode; one CSA + all completions per image, so the fixed-m rows share
their noise); the oracle m per image (lowest NIQE-ours; an upper bound that needs a reference-free
score of every completion, i.e. 64 NFE); the learned bandit and PPO policies when their files exist.
Metrics: PSNR-Y / SSIM-Y (shave 4), NIQE-ours (32-px blocks fitted on the training photos), the
standard NIQE when the crop is >= 192 px, NFE, seconds per image (this shared CPU: compare rows
with each other only).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=str(ROOT / "runs/sr3_small/export/sr3_small.safetensors"))
    ap.add_argument("--policy-dir", default=str(ROOT / "runs/skipdiff_policy"))
    ap.add_argument("--hr-dir", default=str(ROOT.parent / "shared/data/photos/eval"))
    ap.add_argument("--out", default=str(ROOT / "reports/skipdiff"))
    ap.add_argument("--cache", default=str(ROOT / "runs/skipdiff_eval/cache.pt"),
                    help="coarse results + completions per image (tens of MB; kept out of git)")
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--limit", type=int, default=9)
    ap.add_argument("--where", default="texture", choices=["texture", "centre"],
                    help="crop placement (texture: the most textured of 9 grid windows)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-100", action="store_true", help="leave out the 100-step row (slowest)")
    ap.add_argument("--policies-only", action="store_true",
                    help="reuse results.json + cache.pt of an earlier run and (re)compute only the policy rows")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    from tqdm.auto import tqdm

    from fewstep.metrics import niqe, psnr, ssim
    from fewstep.skipdiff import CosineChain, FixedPolicy, SkipDiffSampler, load_policy, load_sr3
    from fewstep.skipdiff.chain import bicubic_up
    from fewstep.skipdiff.policy import PPOPolicy
    from fewstep.skipdiff.rewards import niqe_ours, to_uint8
    from fewstep.skipdiff.sampler import CoarseResult
    from fewstep.skipdiff.train import eval_pairs

    unet = load_sr3(a.weights)
    sampler = SkipDiffSampler(CosineChain(100), coarse=10, fine=10, mode="reset")
    nmodel = niqe_ours(32)
    pairs = eval_pairs(a.hr_dir, 4, a.crop, a.limit, a.where)
    pol_dir = Path(a.policy_dir)
    bandit = load_policy(pol_dir / "bandit_policy.pt") if (pol_dir / "bandit_policy.pt").is_file() else None
    ppo = load_policy(pol_dir / "ppo_policy.pt") if (pol_dir / "ppo_policy.pt").is_file() else None

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict]] = {}
    cache: list[dict] = []
    if a.policies_only:
        rows = {k: v for k, v in json.loads((out / "results.json").read_text())["per_image"].items()
                if k not in ("bandit", "ppo")}
        cache = torch.load(a.cache, map_location="cpu", weights_only=True)

    def score(name, img, hr, nfe, sec, extra=None):
        sr, ref = to_uint8(img), to_uint8(hr)
        r = {"psnr_y": psnr(sr, ref, crop_border=4, y_channel=True), "ssim_y": ssim(sr, ref, crop_border=4, y_channel=True),
             "niqe_ours": niqe(sr, nmodel), "nfe": float(nfe), "sec": sec}
        if min(sr.shape[:2]) >= 192:
            r["niqe"] = niqe(sr)
        r.update(extra or {})
        rows.setdefault(name, []).append(r)

    for i, (name, lr, hr) in enumerate(tqdm(pairs, desc="eval", disable=a.quiet)):
        seed = a.seed + i
        if not a.policies_only:
            t = time.perf_counter()
            score("bicubic", bicubic_up(lr, 4), hr, 0, time.perf_counter() - t)
            for steps in (10, 19) + (() if a.skip_100 else (100,)):
                t = time.perf_counter()
                if steps == 19:  # CSA (9) + all 10 fine steps: the complete 100-level tail
                    img, nfe = sampler(unet, lr, policy=FixedPolicy(10), seed=seed)
                elif steps == 10:
                    img, nfe = sampler.plain(unet, lr, 10, seed=seed)
                else:
                    img, nfe = sampler.plain(unet, lr, None, seed=seed)
                score(f"plain {steps}", img, hr, int(nfe[0]), time.perf_counter() - t)
            # one CSA, every completion m = 1..10 (reset mode: these are all reachable outputs)
            t = time.perf_counter()
            cr = sampler.coarse(unet, lr, seed)
            t_coarse = time.perf_counter() - t
            en = sampler.enumerate(unet, cr)
            t_all = time.perf_counter() - t
            niqes = []
            for m in range(1, 11):
                score(f"fixed m={m}", en["images"][m - 1], hr, 9 + m, t_coarse + (t_all - t_coarse) * m / 55)
                niqes.append(rows[f"fixed m={m}"][-1]["niqe_ours"])
            mo = int(np.argmin(niqes)) + 1
            score("oracle (NIQE-ours)", en["images"][mo - 1], hr, 9 + mo, t_all, {"m": mo})
            cache.append({"x": cr.x, "x0": cr.x0, "cond": cr.cond, "images": en["images"],
                          "t_coarse": torch.tensor(t_coarse), "t_all": torch.tensor(t_all)})
        c = cache[i]
        cr = CoarseResult(c["x"], c["x0"], c["cond"], lr, [seed], sampler.fine_idx[0], sampler.coarse_nfe)
        t_coarse, t_all = float(c["t_coarse"]), float(c["t_all"])
        if bandit is not None:
            t = time.perf_counter()
            mb = int(bandit.predict_m(cr)[0])
            score("bandit", c["images"][mb - 1], hr, 9 + mb,
                  t_coarse + time.perf_counter() - t + (t_all - t_coarse) * mb / 55, {"m": mb})
        if ppo is not None:
            t = time.perf_counter()
            res = sampler.fine(unet, cr, PPOPolicy(ppo.net))
            last_skip = int(np.max(np.nonzero(res.actions[0].numpy() == 1)[0], initial=-1))
            score("ppo", res.image, hr, int(res.nfe[0]), t_coarse + time.perf_counter() - t, {"m": 10 - (last_skip + 1)})
    if not a.policies_only:
        Path(a.cache).parent.mkdir(parents=True, exist_ok=True)
        torch.save(cache, a.cache)

    table = {k: {m: float(np.mean([r[m] for r in v])) for m in v[0]} for k, v in rows.items()}
    meta = {"weights": str(a.weights), "crop": a.crop, "where": a.where, "images": [p[0] for p in pairs], "seed": a.seed,
            "policies": {"bandit": bandit is not None, "ppo": ppo is not None}}
    (out / "results.json").write_text(json.dumps({"meta": meta, "mean": table, "per_image": rows}, indent=1))
    cols = ["psnr_y", "ssim_y", "niqe_ours"] + (["niqe"] if "niqe" in table["bicubic"] else []) + ["nfe", "sec"]
    lines = ["| method | " + " | ".join(cols) + " | m (mean) |", "|---" * (len(cols) + 2) + "|"]
    for k, v in table.items():
        fm = {"psnr_y": "{:.2f}", "ssim_y": "{:.4f}", "niqe_ours": "{:.3f}", "niqe": "{:.3f}", "nfe": "{:.1f}", "sec": "{:.2f}"}
        lines.append(f"| {k} | " + " | ".join(fm[c].format(v[c]) for c in cols) + f" | {v['m']:.1f} |" if "m" in v else
                     f"| {k} | " + " | ".join(fm[c].format(v[c]) for c in cols) + " | |")
    best = min(range(1, 11), key=lambda m: table[f"fixed m={m}"]["niqe_ours"])
    b = table[f"fixed m={best}"]
    lines += ["", f"best fixed m by mean NIQE-ours (the training reward): m={best} "
              f"(NIQE-ours {b['niqe_ours']:.3f}, PSNR-Y {b['psnr_y']:.2f}, NFE {b['nfe']:.0f})"]
    for k in ("bandit", "ppo", "oracle (NIQE-ours)"):
        if k in table:
            v = table[k]
            verdict = "beats" if v["niqe_ours"] < b["niqe_ours"] else "does not beat"
            lines.append(f"- {k}: NIQE-ours {v['niqe_ours']:.3f} ({verdict} the best fixed m), "
                         f"PSNR-Y {v['psnr_y'] - b['psnr_y']:+.2f} dB, NFE {v['nfe'] - b['nfe']:+.1f} vs it")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(table, out / "pd_plot.png")


def _plot(table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    fixed = [(table[f"fixed m={m}"]["niqe_ours"], table[f"fixed m={m}"]["psnr_y"]) for m in range(1, 11)]
    ax.plot(*zip(*fixed), "o-", color="tab:blue", label="fixed m = 1..10")
    for m, (x, y) in zip(range(1, 11), fixed):
        ax.annotate(str(m), (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    marks = {"bicubic": "ks", "plain 10": "g^", "plain 100": "gv", "oracle (NIQE-ours)": "r*", "bandit": "mD", "ppo": "cP"}
    for k, style in marks.items():
        if k in table:
            ax.plot(table[k]["niqe_ours"], table[k]["psnr_y"], style, ms=9, label=k)
    ax.set_xlabel("NIQE-ours (lower = better perception)")
    ax.set_ylabel("PSNR-Y dB (higher = less distortion)")
    ax.set_title("SkipDiff on the small SR3 (x4, eval crops)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
