"""`fewstep make-testset`: a fixed-seed LR/HR test set from a folder of HR images.

Writes OUT/hr/NAME.png, OUT/lr/NAME.png and OUT/testset.json (preset with all its parameters, seed,
per-image seeds and the random draws of each image). With --crop, each image is resized so that its
shorter side is `crop` (bilinear, like albumentations' SmallestMaxSize in ResShift's
`prepare_testing_imagenet_sr.py`) and centre-cropped to crop×crop; without it, the HR is cropped at
the bottom/right to a multiple of the scale.
"""

from __future__ import annotations

from pathlib import Path

import typer


def _centre_crop(img, crop: int):
    import cv2

    h, w = img.shape[:2]
    if min(h, w) != crop:
        s = crop / min(h, w)
        nh, nw = max(crop, int(round(h * s))), max(crop, int(round(w * s)))
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
        h, w = nh, nw
    top, left = (h - crop) // 2, (w - crop) // 2
    return img[top : top + crop, left : left + crop]


def make_testset(
    hr_dir: str | Path,
    out: str | Path,
    preset: str = "resshift-test",
    scale: int = 4,
    seed: int = 0,
    crop: int | None = None,
    overwrite: bool = False,
    quiet: bool = False,
) -> dict:
    """Library form of the command; returns the testset.json record.

    Everything is written into a temporary sibling folder (``.OUT.tmp-XXXX``) that is renamed to
    OUT only at the end, so an interrupted run never leaves a half set that blocks the rerun (the
    next run removes such leftovers). An HR file that cannot be read, or is smaller than the scale,
    is skipped and reported (stderr, and ``skipped`` in testset.json); the per-image seeds do not
    depend on which files were skipped."""
    import dataclasses
    import json
    import shutil
    import sys
    import uuid

    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from ..errors import FewstepError
    from ..imageio import list_folder, read_rgb8
    from .pipeline import degrade, get_preset
    from .presets import FacePreset

    p = get_preset(preset)
    sf = 1 if isinstance(p, FacePreset) else int(scale)
    out = Path(out)
    files = list_folder(hr_dir)
    if not files:
        raise FewstepError(f"{hr_dir}: no images (png/jpg/jpeg/bmp/webp/tif)")
    if crop is not None and (crop < 1 or crop % sf):
        raise FewstepError(f"--crop {crop} must be a positive multiple of --scale {sf}")
    if out.exists() and not out.is_dir():
        raise FewstepError(f"{out}: is a file, not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FewstepError(f"{out}: output folder is not empty; pass --overwrite to replace it")
    parent = out.resolve().parent
    for stale in parent.glob(f".{out.name}.tmp-*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    tmp = parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        (tmp / "hr").mkdir(parents=True)
        (tmp / "lr").mkdir()
    except OSError as e:
        raise FewstepError(f"{out}: cannot create the output folder ({e.strerror or e})") from None
    seeds = np.random.SeedSequence(int(seed)).generate_state(len(files), dtype=np.uint64) >> 2
    record = {
        "preset": p.name,
        "parameters": dataclasses.asdict(p),
        "scale": sf,
        "seed": int(seed),
        "crop": crop,
        "source": str(Path(hr_dir).resolve()),
        "images": [],
        "skipped": [],
    }
    try:
        for f, s in zip(tqdm(files, desc="make-testset", unit="img", disable=quiet), seeds):
            try:
                hr = read_rgb8(f)
                if crop is not None:
                    hr = _centre_crop(hr, int(crop))
                else:
                    h, w = hr.shape[:2]
                    hr = hr[: h - h % sf, : w - w % sf]
                if min(hr.shape[:2]) < sf:
                    raise FewstepError(f"{f}: image is smaller than the scale {sf}")
            except FewstepError as e:
                print(f"skipped: {e}", file=sys.stderr)
                record["skipped"].append({"source": f.name, "reason": str(e)})
                continue
            log: dict = {}
            lr = degrade(np.ascontiguousarray(hr), p, sf, int(s), log)
            name = f.stem + ".png"
            Image.fromarray(hr).save(tmp / "hr" / name)
            Image.fromarray(lr).save(tmp / "lr" / name)
            record["images"].append(
                {"name": name, "source": f.name, "seed": int(s), "hr_size": list(hr.shape[:2]), "lr_size": list(lr.shape[:2]), "draws": log}
            )
        if not record["images"]:
            raise FewstepError(f"{hr_dir}: none of the {len(files)} images could be used (see the skipped lines)")
        (tmp / "testset.json").write_text(json.dumps(record, indent=1))
        if out.exists():  # replace (empty, or --overwrite): move the old one aside first
            old = parent / f".{out.name}.tmp-old-{uuid.uuid4().hex[:8]}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return record


def make_testset_command(
    hr_dir: Path = typer.Argument(..., help="Folder of HR images."),
    out: Path = typer.Argument(..., help="Output folder (gets hr/, lr/ and testset.json)."),
    preset: str = typer.Option("resshift-test", "--preset", help="resshift-test | resshift | s3diff | bicubic | faceir"),
    scale: int = typer.Option(4, "--scale", help="Downscaling factor (ignored by faceir)."),
    seed: int = typer.Option(0, "--seed", help="Master seed; per-image seeds are derived from it."),
    crop: int | None = typer.Option(None, "--crop", help="Shorter side to CROP then centre crop CROPxCROP."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty output folder."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Make a fixed-seed LR/HR test set with a degradation preset.

    Exit status: 0 all images used, 1 some HR files were skipped (listed on stderr and in
    testset.json), 2 nothing written."""
    import sys

    try:
        rec = make_testset(hr_dir, out, preset, scale, seed, crop, overwrite, quiet)
    except KeyboardInterrupt:
        print("interrupted: nothing written (the output folder is only created at the end)", file=sys.stderr)
        raise typer.Exit(code=130) from None
    skipped = len(rec["skipped"])
    print(f"wrote {len(rec['images'])} pairs to {out}" + (f"; skipped {skipped} bad file(s)" if skipped else ""),
          file=sys.stderr)
    if skipped:
        raise typer.Exit(code=1)
