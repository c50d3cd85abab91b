"""fewstep.datasets: deterministic degradation pairs, padding/skipping, workers, prepared folders."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from fewstep.datasets import PairedDegradationDataset, PairedFolderDataset
from fewstep.degrade import degrade_one
from fewstep.errors import FewstepError


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def hr_dir(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "hr"
    d.mkdir()
    for name, (h, w) in {"a.png": (96, 80), "b.PNG": (70, 120), "tiny.jpg": (40, 50)}.items():
        base = rng.uniform(0, 255, (h // 8 + 1, w // 8 + 1, 3)).astype(np.uint8)
        img = Image.fromarray(base).resize((w, h), Image.BICUBIC)
        img.save(d / name, quality=95) if name.endswith("jpg") else img.save(d / name)
    (d / "notes.txt").write_text("not an image")
    return d


def test_shapes_and_ranges(hr_dir):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ds = PairedDegradationDataset(hr_dir, crop=64, scale=4, preset="resshift", seed=1)
        items = [ds[i] for i in range(len(ds))]
    assert len(ds) == 3
    assert any("reflect-padded" in str(x.message) and "tiny.jpg" in str(x.message) for x in w)
    for it in items:
        assert it["hr"].shape == (3, 64, 64) and it["lr"].shape == (3, 16, 16)
        assert it["hr"].dtype == torch.float32 and it["lr"].dtype == torch.float32
        for t in (it["hr"], it["lr"]):
            assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
        # LR is exactly the preset applied to the HR crop with the recorded seed
        assert torch.equal(it["lr"], degrade_one(it["hr"], "resshift", 4, it["seed"]))


def test_deterministic_per_seed_index_epoch(hr_dir):
    a = PairedDegradationDataset(hr_dir, crop=32, scale=4, preset="resshift-test", seed=5, length=6)
    b = PairedDegradationDataset(hr_dir, crop=32, scale=4, preset="resshift-test", seed=5, length=6)
    for i in (4, 0, 2):  # order of access does not matter
        assert torch.equal(a[i]["hr"], b[i]["hr"]) and torch.equal(a[i]["lr"], b[i]["lr"])
    assert len(a) == 6
    e0 = a[1]
    a.set_epoch(1)
    e1 = a[1]
    assert not torch.equal(e0["hr"], e1["hr"]) or not torch.equal(e0["lr"], e1["lr"])
    a.set_epoch(0)
    assert torch.equal(a[1]["lr"], e0["lr"])
    c = PairedDegradationDataset(hr_dir, crop=32, scale=4, preset="resshift-test", seed=6, length=6)
    assert not torch.equal(c[1]["lr"], e0["lr"])


def test_dataloader_workers_match_direct_indexing(hr_dir):
    ds = PairedDegradationDataset(hr_dir, crop=32, scale=4, preset="bicubic", seed=2, length=4, small="skip")
    ds.set_epoch(3)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, shuffle=False)
    batches = list(loader)
    lr = torch.cat([b["lr"] for b in batches])
    hr = torch.cat([b["hr"] for b in batches])
    for i in range(4):
        assert torch.equal(lr[i], ds[i]["lr"]) and torch.equal(hr[i], ds[i]["hr"])


def test_skip_small_and_flips(hr_dir):
    with pytest.warns(UserWarning, match="skipped"):
        ds = PairedDegradationDataset(hr_dir, crop=64, scale=4, small="skip")
    assert [p.name for p in ds.files] == ["a.png", "b.PNG"]
    with pytest.raises(FewstepError, match="no usable images"):
        with pytest.warns(UserWarning):
            PairedDegradationDataset(hr_dir, crop=200, scale=4, small="skip")
    with pytest.raises(FewstepError, match="multiple of scale"):
        PairedDegradationDataset(hr_dir, crop=30, scale=4)
    # without flips every crop is an unflipped window of the source image
    ds = PairedDegradationDataset(hr_dir, crop=32, scale=4, preset="bicubic", flips=False, length=2, small="skip")
    src = np.asarray(Image.open(ds.files[0]).convert("RGB")).astype(np.float32) / 255
    hr = ds[0]["hr"].permute(1, 2, 0).numpy()
    found = any(np.allclose(src[t : t + 32, l : l + 32], hr, atol=1e-6) for t in range(src.shape[0] - 31) for l in range(src.shape[1] - 31))
    assert found


def test_paired_folder_dataset(tmp_path):
    rng = np.random.default_rng(1)
    lr_dir, hr_dir = tmp_path / "lr", tmp_path / "hr"
    lr_dir.mkdir()
    hr_dir.mkdir()
    for n in ("x", "y"):
        Image.fromarray(rng.integers(0, 255, (16, 12, 3), dtype=np.uint8)).save(lr_dir / f"{n}.png")
        Image.fromarray(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8)).save(hr_dir / f"{n}.png")
    ds = PairedFolderDataset(lr_dir, hr_dir)
    assert len(ds) == 2 and ds[1]["name"] == "y" and ds[1]["scale"] == 4
    assert ds[0]["lr"].shape == (3, 16, 12) and ds[0]["hr"].shape == (3, 64, 48)
    ref = np.asarray(Image.open(lr_dir / "x.png")).astype(np.float32) / 255
    np.testing.assert_allclose(ds[0]["lr"].permute(1, 2, 0).numpy(), ref, atol=1e-7)
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(lr_dir / "z.png")
    with pytest.raises(FewstepError, match="no counterpart for 'z'"):
        PairedFolderDataset(lr_dir, hr_dir)
