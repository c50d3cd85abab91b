#!/usr/bin/env python3
"""Rebuild ../shared/data/photos (train/ and eval/) from the Debian packages in its MANIFEST.json.

Usage (from the repository root; needs `apt-get download` and `dpkg-deb`, i.e. Debian/Ubuntu with
the bookworm archive configured; ≈ 220 MB of .deb files, ≈ 10 s to fetch):

    python scripts/rebuild_photos.py --out /tmp/photos                 # rebuild into a new folder
    python scripts/rebuild_photos.py --out /tmp/photos --only mate-backgrounds
    python scripts/rebuild_photos.py --verify                          # rebuild in a temp dir and
                                                                       # compare with the shared set

Options: --manifest PATH (default ../shared/data/photos/MANIFEST.json), --out DIR (default: the
manifest's folder; existing files are kept unless --overwrite), --only PKG (repeatable),
--debs DIR (reuse downloaded .deb files), --verify.

Conversions (they reproduce the shared files bit-exactly; checked with --verify):
- every source is decoded with Pillow and converted to RGB (e.g. the gray `Grey` wallpaper);
- train/: when MANIFEST `size` ([w, h]) is half the source size (floor), the image is downscaled ×2
  with Pillow LANCZOS (antialiased; hides JPEG blocking, like the DIV2K/LSDIR clean-HR convention);
  when it equals the source size (the 500×500 lossless photos) it is copied as is;
- eval/: the ×2 LANCZOS downscale, then the centre crop of `size` (offset (H-h)//2, (W-w)//2);
- output is PNG; MANIFEST.json is copied next to the images (licences: keep it with any derived data).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MANIFEST = REPO.parent / "shared" / "data" / "photos" / "MANIFEST.json"


def fetch(package: str, debs: Path, root: Path) -> Path:
    """Download `package` with apt-get (into `debs`) and unpack it under root/package."""
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        r = subprocess.run(["apt-get", "download", package], cwd=debs, capture_output=True, text=True)
        found = sorted(debs.glob(f"{package}_*.deb"))
        if r.returncode != 0 or not found:
            sys.exit(f"error: apt-get download {package} failed: {r.stderr.strip().splitlines()[-1:]}")
    dest = root / package
    if not dest.exists():
        dest.mkdir(parents=True)
        subprocess.run(["dpkg-deb", "-x", str(found[-1]), str(dest)], check=True)
    return dest


def convert(src: Image.Image, entry: dict) -> Image.Image:
    img = src.convert("RGB")
    w, h = img.size
    tw, th = (int(v) for v in entry["size"])
    half = (w // 2, h // 2)
    if entry["split"] == "train":
        if (tw, th) == (w, h):
            return img
        if (tw, th) == half:
            return img.resize(half, Image.LANCZOS)
        sys.exit(f"error: {entry['file']}: size {tw}x{th} is neither the source {w}x{h} nor half of it")
    if half[0] >= tw and half[1] >= th:
        img = img.resize(half, Image.LANCZOS)
    w, h = img.size
    top, left = (h - th) // 2, (w - tw) // 2
    return img.crop((left, top, left + tw, top + th))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--only", action="append", default=None, help="only this Debian package (repeatable)")
    ap.add_argument("--debs", type=Path, default=None, help="folder for (or with) downloaded .deb files")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--verify", action="store_true", help="rebuild into a temp dir and compare with the manifest's folder")
    args = ap.parse_args()

    if not args.manifest.is_file():
        sys.exit(f"error: {args.manifest}: manifest not found")
    entries = json.loads(args.manifest.read_text())
    if args.only:
        entries = [e for e in entries if e["source_package"] in args.only]
        if not entries:
            sys.exit(f"error: no manifest entry comes from {', '.join(args.only)}")
    shared = args.manifest.parent
    with tempfile.TemporaryDirectory(prefix="fewstep-photos-") as tmp:
        tmp = Path(tmp)
        out = tmp / "out" if args.verify else (args.out or shared)
        debs = args.debs or tmp / "debs"
        unpacked: dict[str, Path] = {}
        worst = 0
        for e in entries:
            pkg = e["source_package"]
            if pkg not in unpacked:
                print(f"fetching {pkg} ...", flush=True)
                unpacked[pkg] = fetch(pkg, debs, tmp / "x")
            dst = out / e["file"]
            if dst.exists() and not args.overwrite:
                print(f"  keep {dst} (exists; --overwrite to replace)")
                continue
            src_path = unpacked[pkg] / e["source_path"].lstrip("/")
            if not src_path.is_file():
                sys.exit(f"error: {pkg} has no {e['source_path']}")
            with Image.open(src_path) as src:
                img = convert(src, e)
            dst.parent.mkdir(parents=True, exist_ok=True)
            img.save(dst)
            if args.verify:
                ref = np.asarray(Image.open(shared / e["file"]).convert("RGB")).astype(np.int16)
                new = np.asarray(img).astype(np.int16)
                diff = int(np.abs(ref - new).max()) if ref.shape == new.shape else 255
                worst = max(worst, diff)
                print(f"  {e['file']}: {'identical' if diff == 0 else f'max abs diff {diff}'}")
            else:
                print(f"  wrote {dst}")
        if not args.verify:
            shutil.copyfile(args.manifest, out / "MANIFEST.json") if args.manifest.resolve() != (out / "MANIFEST.json").resolve() else None
        elif worst:
            sys.exit(f"verify: some images differ (max abs diff {worst})")
        else:
            print(f"verify: all {len(entries)} images identical")


if __name__ == "__main__":
    main()
