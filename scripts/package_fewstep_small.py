"""Assemble the bundled `fewstep-small` model folder from the two training exports.

    python scripts/package_fewstep_small.py \
        --autoencoder runs/autoencoder_small/export --resshift runs/resshift_small/export \
        --out src/fewstep/data/models/fewstep-small

Copies the EMA weights (already fp16 safetensors) and writes `fewstep_model.json` with
`fewstep.model_folder` (the helper the trainers' exports use): the configs as plain data, so
`fewstep.load(FOLDER)` rebuilds the model without this repository's configs. (The ResShift trainer's
own `export/` is already such a folder; this script names the model and takes the autoencoder
trainer's step into the card.)
The model card (MODEL_CARD.md) is written by hand from the training logs and `fewstep eval`.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from fewstep.model_folder import resshift_card, write_model_folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--autoencoder", type=Path, required=True, help="autoencoder trainer's export folder")
    ap.add_argument("--resshift", type=Path, required=True, help="ResShift trainer's export folder")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tile", type=int, default=256, help="default tile size in LR pixels")
    ap.add_argument("--overlap", type=int, default=32)
    args = ap.parse_args()

    ae_meta = json.loads((args.autoencoder / "autoencoder.json").read_text())
    rs_meta = json.loads((args.resshift / "resshift.json").read_text())
    if ae_meta["params"] != rs_meta["autoencoder"]["params"]:
        raise SystemExit(f"autoencoder params differ: {ae_meta['params']} (export) vs "
                         f"{rs_meta['autoencoder']['params']} (ResShift config)")
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.autoencoder / "autoencoder.safetensors", args.out / "autoencoder.safetensors")
    shutil.copyfile(args.resshift / "unet.safetensors", args.out / "unet.safetensors")
    card = resshift_card(
        name="fewstep-small", scale=rs_meta["scale"], unet=rs_meta["model"], vq=ae_meta["params"],
        chain=rs_meta["diffusion"], tile=args.tile, overlap=args.overlap,
        training={"autoencoder_step": ae_meta["step"], "resshift_step": rs_meta["step"],
                  "ema": bool(rs_meta["ema"] and ae_meta["ema"]), "dtype": rs_meta["dtype"]})
    write_model_folder(args.out, card, ["unet.safetensors", "autoencoder.safetensors"])
    total = sum((args.out / f).stat().st_size for f in ("unet.safetensors", "autoencoder.safetensors"))
    print(f"wrote {args.out} ({total / 2 ** 20:.1f} MiB of weights)")


if __name__ == "__main__":
    main()
