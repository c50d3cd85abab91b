"""Evaluation datasets: a folder of HR images x a degradation preset (LR made on the fly, seeded
per image from (seed, file name)), or a prepared test set with `lr/` and `hr/` subfolders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import FewstepError
from ..imageio import IMAGE_EXTENSIONS
from ..imageio import list_folder as list_images  # the project's one image lister
from ..utils.seeding import seed_from

IMAGE_EXTS = tuple("." + e for e in IMAGE_EXTENSIONS)  # the project's one list (fewstep.imageio)


@dataclass(frozen=True)
class Dataset:
    """Either `hr_dir` + `degradation` (LR synthesised), or a prepared set (`lr_dir`, optional `hr_dir`)."""

    name: str
    hr_dir: Path | None = None
    lr_dir: Path | None = None
    degradation: str | None = None

    @property
    def prepared(self) -> bool:
        return self.lr_dir is not None


def make_datasets(data_dirs: Sequence[str | Path], degradations: Sequence[str] = ()) -> list[Dataset]:
    """Turn `--data DIR` x `--degradation NAME` into datasets.

    A DIR with an `lr/` subfolder is a prepared test set (degradations do not apply to it); any
    other DIR is a folder of HR images, paired with each degradation preset.
    """
    out: list[Dataset] = []
    for d in data_dirs:
        folder = Path(d)
        if not folder.is_dir():
            raise FewstepError(f"--data {d}: not a folder")
        if (folder / "lr").is_dir():
            hr = folder / "hr"
            out.append(Dataset(name=folder.name, lr_dir=folder / "lr", hr_dir=hr if hr.is_dir() else None))
            continue
        if not degradations:
            raise FewstepError(f"--data {d}: a folder of HR images needs --degradation PRESET "
                               "(e.g. resshift-test or bicubic), or use a prepared test set with lr/ and hr/")
        if not list_images(folder):
            raise FewstepError(f"--data {d}: no images ({', '.join(IMAGE_EXTS)}) in the folder")
        for preset in degradations:
            out.append(Dataset(name=f"{folder.name}/{preset}", hr_dir=folder, degradation=preset))
    names = [ds.name for ds in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise FewstepError(f"--data: two datasets are both named {dupes[0]!r}; give folders distinct names")
    return out


def _as_dataset(spec: Dataset | str | Path | tuple) -> list[Dataset]:
    if isinstance(spec, Dataset):
        return [spec]
    if isinstance(spec, tuple):
        folder, preset = spec
        return make_datasets([folder], [preset] if preset else [])
    return make_datasets([spec], [])


def image_seed(seed: int, image_name: str) -> int:
    """Per-image seed from (run seed, file name): stable across runs, machines and image order."""
    return seed_from(f"{int(seed)}/{image_name}", bits=31, algorithm="sha256")  # 31 bits: fits any int32 API


def _find_hr(hr_dir: Path | None, lr_path: Path) -> Path | None:
    if hr_dir is None:
        return None
    exact = hr_dir / lr_path.name
    if exact.is_file():
        return exact
    for p in sorted(hr_dir.glob(lr_path.stem + ".*")):
        if p.suffix.lower() in IMAGE_EXTS:
            return p
    return None


def load_pair(ds: Dataset, image: Path, *, scale: int, seed: int):
    """-> (lr uint8, hr uint8 or None, per-image seed)."""
    from ..imageio import read_rgb8

    s = image_seed(seed, image.name)
    if ds.prepared:
        lr = read_rgb8(image)
        hr_path = _find_hr(ds.hr_dir, image)
        hr = read_rgb8(hr_path) if hr_path is not None else None
        if hr is not None and hr.shape[:2] != (lr.shape[0] * scale, lr.shape[1] * scale):
            raise FewstepError(f"{hr_path}: HR size {hr.shape[1]}x{hr.shape[0]} is not {scale}x the LR size "
                               f"{lr.shape[1]}x{lr.shape[0]}")
        return lr, hr, s
    hr = read_rgb8(image)
    h, w = (hr.shape[0] // scale) * scale, (hr.shape[1] // scale) * scale
    if h == 0 or w == 0:
        raise FewstepError(f"{image}: {hr.shape[1]}x{hr.shape[0]} is smaller than the scale {scale}")
    hr = hr[:h, :w].copy()  # crop to a multiple of scale so that LR x scale == HR exactly
    return _degrade(hr, ds.degradation, scale, s), hr, s


def _degrade(hr, preset: str, scale: int, seed: int):
    from ..degrade import degrade

    return degrade(hr, preset=preset, scale=scale, seed=seed)
