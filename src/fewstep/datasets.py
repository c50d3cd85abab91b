"""Datasets for training (on-the-fly degradations) and evaluation (prepared LR/HR folders).

`PairedDegradationDataset` yields {"hr": (3,crop,crop), "lr": (3,crop/s,crop/s)} float tensors in
[0,1]. Sample `i` of epoch `e` is a pure function of (seed, e, i): the crop, the flip and the
degradation seed come from `numpy.random.SeedSequence([seed, e, i])`, so results do not depend on
DataLoader workers, their number, or the order in which items are requested.

With DataLoader workers call `set_epoch(e)` before iterating the loader for that epoch (workers get
a copy of the dataset when the iterator starts; with `persistent_workers=True` they would keep the
old epoch).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import FewstepError, ImageReadError
from .imageio import list_folder as list_images  # the project's one image lister

def _read_rgb(path: Path) -> np.ndarray:
    """HxWx3 float32 RGB in [0,1] (EXIF, 16-bit, palette ... handled by fewstep.imageio)."""
    from .imageio import read_image

    return np.asarray(read_image(path).rgb, dtype=np.float32)


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.height, im.width
    except (OSError, ValueError) as e:
        raise ImageReadError(f"{path}: cannot read image ({e})") from None


def item_seeds(seed: int, epoch: int, index: int) -> tuple[int, int]:
    """(crop/flip seed, degradation seed) for one item; stable across machines and processes."""
    from .utils.seeding import seed_states

    a, b = seed_states([seed, epoch, index], 2)
    return int(a >> 2), int(b >> 2)


class EpochSeededDataset(Dataset):
    """Base of the training datasets whose item i of epoch e is a pure function of (seed, e, i).
    Subclasses set `seed` and `length`; the trainer calls `set_epoch(e)` before each epoch."""

    seed: int = 0
    length: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def item_rng(self, index: int) -> np.random.Generator:
        """Item `index`'s own generator for this epoch (crop position, flips, ...)."""
        return np.random.default_rng([self.seed, self.epoch, int(index)])


class PairedDegradationDataset(EpochSeededDataset):
    """Random HR crops of the images in `hr_dir` with LR made by a degradation preset.

    small: what to do with images smaller than `crop`: "pad" (reflect-pad, with a warning) or
    "skip" (drop them at construction, with a warning).
    length: number of items per epoch (default: number of images); item i uses image i mod N.
    """

    def __init__(
        self,
        hr_dir: str | Path,
        crop: int = 256,
        scale: int = 4,
        preset: str = "resshift",
        seed: int = 0,
        flips: bool = True,
        length: int | None = None,
        small: str = "pad",
    ):
        from .degrade.pipeline import get_preset
        from .degrade.presets import FacePreset

        self.preset = get_preset(preset)
        self.scale = 1 if isinstance(self.preset, FacePreset) else int(scale)
        if crop < 1 or crop % self.scale:
            raise FewstepError(f"crop {crop} must be a positive multiple of scale {self.scale}")
        if small not in ("pad", "skip"):
            raise FewstepError(f"small must be 'pad' or 'skip', got {small!r}")
        files = list_images(hr_dir)
        if small == "skip":
            kept = []
            for f in files:
                h, w = _image_size(f)
                if h < crop or w < crop:
                    warnings.warn(f"{f}: {h}x{w} is smaller than the {crop} crop; skipped", stacklevel=2)
                else:
                    kept.append(f)
            files = kept
        if not files:
            raise FewstepError(f"{hr_dir}: no usable images (png/jpg/jpeg/bmp/webp/tif)")
        self.files = files
        self.crop = int(crop)
        self.seed = int(seed)
        self.flips = bool(flips)
        self.length = len(files) if length is None else int(length)
        self._warned: set[Path] = set()

    def _crop(self, img: np.ndarray, rng: np.random.Generator, path: Path) -> np.ndarray:
        h, w = img.shape[:2]
        c = self.crop
        if h < c or w < c:
            if path not in self._warned:
                warnings.warn(f"{path}: {h}x{w} is smaller than the {c} crop; reflect-padded", stacklevel=3)
                self._warned.add(path)
            ph, pw = max(0, c - h), max(0, c - w)
            # numpy "reflect" cannot pad more than size-1 at once; "symmetric" then repeats if needed
            mode = "reflect" if ph < h and pw < w else "symmetric"
            img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode=mode)
            if img.shape[0] < c or img.shape[1] < c:
                img = np.pad(img, ((0, max(0, c - img.shape[0])), (0, max(0, c - img.shape[1])), (0, 0)), mode="wrap")
            h, w = img.shape[:2]
        top = int(rng.integers(0, h - c + 1))
        left = int(rng.integers(0, w - c + 1))
        out = img[top : top + c, left : left + c]
        if self.flips and rng.uniform() < 0.5:
            out = out[:, ::-1]
        return np.ascontiguousarray(out)

    def __getitem__(self, index: int) -> dict:
        from .degrade.pipeline import degrade_one

        if not 0 <= index < self.length:
            raise IndexError(index)
        crop_seed, deg_seed = item_seeds(self.seed, self.epoch, index)
        path = self.files[index % len(self.files)]
        rng = np.random.Generator(np.random.PCG64(crop_seed))
        hr_np = self._crop(_read_rgb(path), rng, path)
        # quantise to 8-bit levels like a decoded PNG/JPEG crop, so HR and LR share one convention
        hr = torch.from_numpy(np.round(hr_np * 255.0) / 255.0).permute(2, 0, 1).float().contiguous()
        lr = degrade_one(hr, self.preset, self.scale, deg_seed)
        return {"hr": hr, "lr": lr.contiguous(), "index": index, "seed": deg_seed}


class PairedFolderDataset(Dataset):
    """Prepared pairs: files with the same stem in `lr_dir` and `hr_dir` (e.g. `make-testset` output)."""

    def __init__(self, lr_dir: str | Path, hr_dir: str | Path):
        lr = {p.stem: p for p in list_images(lr_dir)}
        hr = {p.stem: p for p in list_images(hr_dir)}
        missing = sorted(set(lr) ^ set(hr))
        if missing:
            where = hr_dir if missing[0] in lr else lr_dir
            raise FewstepError(f"{where}: no counterpart for {missing[0]!r} ({len(missing)} unmatched file(s))")
        if not lr:
            raise FewstepError(f"{lr_dir}: no images")
        self.names = sorted(lr)
        self.lr_files = [lr[n] for n in self.names]
        self.hr_files = [hr[n] for n in self.names]

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        lr = _read_rgb(self.lr_files[index])
        hr = _read_rgb(self.hr_files[index])
        (lh, lw), (hh, hw) = lr.shape[:2], hr.shape[:2]
        if hh % lh or hw % lw or hh // lh != hw // lw:
            raise FewstepError(f"{self.hr_files[index]}: size {hh}x{hw} is not an integer multiple of the LR {lh}x{lw}")
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float()  # noqa: E731
        return {"lr": t(lr), "hr": t(hr), "name": self.names[index], "scale": hh // lh}
