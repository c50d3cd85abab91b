"""fewstep.metrics against closed forms, an independent SSIM, and the reference implementations.

Reference numbers (tests/fixtures/metrics_reference.json) come from BasicSR 1.4.2's own NIQE/PSNR/SSIM
code and OpenCV-contrib's QualityBRISQUE; see its "how_produced" field and docs/metrics.md. They are
checked against fewstep's `flavour="basicsr"` NIQE and `flavour="opencv"` BRISQUE; the defaults (MATLAB
niqe, the authors' BRISQUE release) are checked against the published values in
tests/test_metrics_calibration.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewstep.errors import CheckpointError, FewstepError, WeightsNotFoundError
from fewstep.metrics import (METRICS, NiqeModel, brisque, fit_niqe_model, get_metric, niqe, psnr, ssim)

FIXTURE = Path(__file__).parent / "fixtures" / "metrics_reference.json"
_ROOT = Path(__file__).resolve().parents[1]
# copies of the shared photos, shipped with the tests
PHOTOS = Path(__file__).resolve().parent / "fixtures" / "photos"
REF = json.loads(FIXTURE.read_text())["images"]


def _load(key: str) -> np.ndarray:
    """The fixture image `key`: an eval photo, or its PIL-bicubic x1/4 -> x4 version ('__bicx4')."""
    stem, _, kind = key.partition("__")
    im = Image.open(PHOTOS / "eval" / f"{stem}.png").convert("RGB")
    if kind == "bicx4":
        w, h = im.size
        im = im.resize((w // 4, h // 4), Image.BICUBIC).resize((w, h), Image.BICUBIC)
    return np.asarray(im)


def _rng_image(h=48, w=40, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------- PSNR / Y channel

def test_psnr_constant_offset_closed_form():
    ref = np.full((32, 24, 3), 100, np.uint8)
    for d in (1, 5, 37):
        img = ref + np.uint8(d)
        assert psnr(img, ref) == pytest.approx(20 * math.log10(255 / d), abs=1e-12)
        # Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 moves by d * 219 / 255
        assert psnr(img, ref, y_channel=True) == pytest.approx(20 * math.log10(255 / (d * 219 / 255)), abs=1e-9)
    assert psnr(ref, ref) == math.inf


def test_psnr_crop_border_removes_exactly_the_border():
    ref = np.zeros((20, 20, 3), np.uint8)
    img = ref.copy()
    img[:3] = 255  # 3 damaged rows at the top
    assert psnr(img, ref, crop_border=3) == math.inf
    # crop 2: one damaged row of 16 remains -> mse = 255^2 / 16
    assert psnr(img, ref, crop_border=2) == pytest.approx(10 * math.log10(16), abs=1e-12)


def test_y_channel_values_match_matlab_rgb2ycbcr():
    from fewstep.metrics._image import rgb_to_y

    px = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.float64)
    assert rgb_to_y(px)[0] == pytest.approx([16.0, 235.0, 16 + 65.481, 16 + 128.553, 16 + 24.966], abs=1e-9)


def test_fullref_errors_are_one_line_fewstep_errors():
    a = _rng_image()
    with pytest.raises(FewstepError, match="differ in shape"):
        psnr(a, a[:-1])
    with pytest.raises(FewstepError, match="crop_border"):
        ssim(a, a, crop_border=30)
    with pytest.raises(FewstepError, match="expected a single image"):
        psnr(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8))


# ---------------------------------------------------------------- SSIM

def _ssim_scipy(a: np.ndarray, b: np.ndarray) -> float:
    """Independent SSIM: full 2-D window with scipy.ndimage.correlate, 'valid' by cropping."""
    from scipy.ndimage import correlate

    yy, xx = np.mgrid[-5:6, -5:6]
    win = np.exp(-(xx**2 + yy**2) / (2 * 1.5**2))
    win /= win.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for c in range(a.shape[2]):
        x, y = a[..., c].astype(np.float64), b[..., c].astype(np.float64)

        def f(z):
            return correlate(z, win, mode="constant")[5:-5, 5:-5]

        mx, my = f(x), f(y)
        sxx, syy, sxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
        vals.append((((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))).mean())
    return float(np.mean(vals))


def test_ssim_identical_is_one_and_matches_independent_reference():
    a = _rng_image(40, 36, seed=1)
    noise = np.random.default_rng(2).normal(0, 12, a.shape)
    b = np.clip(a + noise, 0, 255).astype(np.uint8)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert ssim(a, b) == pytest.approx(_ssim_scipy(a, b), abs=1e-10)
    assert 0.5 < ssim(a, b) < 0.999
    from fewstep.metrics._image import rgb_to_y

    ya, yb = rgb_to_y(a.astype(np.float64))[..., None], rgb_to_y(b.astype(np.float64))[..., None]
    assert ssim(a, b, y_channel=True) == pytest.approx(_ssim_scipy(ya, yb), abs=1e-10)
    assert ssim(a, b, crop_border=4) == pytest.approx(_ssim_scipy(a[4:-4, 4:-4], b[4:-4, 4:-4]), abs=1e-10)


def test_psnr_ssim_match_basicsr_on_degraded_photos():
    for key, ref in REF.items():
        if not key.endswith("__bicx4"):
            continue
        sr, hr = _load(key), _load(key.split("__")[0])
        for crop in (0, 4):
            for y in (False, True):
                s = "_y" if y else ""
                assert psnr(sr, hr, crop, y) == pytest.approx(ref[f"psnr{s}_crop{crop}"], rel=1e-7), key
        # SSIM costs ~0.15 s per 512px call: two of the four variants per pair
        assert ssim(sr, hr, 0, False) == pytest.approx(ref["ssim_crop0"], rel=1e-7), key
        assert ssim(sr, hr, 4, True) == pytest.approx(ref["ssim_y_crop4"], rel=1e-7), key


# ---------------------------------------------------------------- NIQE / BRISQUE vs references

@pytest.mark.parametrize("key", sorted(REF))
def test_niqe_within_1pct_of_basicsr(key):
    img, ref = _load(key), REF[key]
    # the BasicSR flavour reproduces calculate_niqe (residual: BasicSR's float32 arithmetic)
    assert niqe(img, flavour="basicsr") == pytest.approx(ref["niqe_gray"], rel=0.01)
    assert niqe(img, convert_to="y", flavour="basicsr") == pytest.approx(ref["niqe_y"], rel=0.01)
    if "Storm" in key or "flower" in key:
        assert niqe(img, convert_to="y", crop_border=4, flavour="basicsr") == pytest.approx(ref["niqe_y_crop4"], rel=0.01)
    # The default (MATLAB niqe) differs from BasicSR by design: rgb2gray's own coefficients and
    # round-half-up (gray), 0-255 resize and exact zeros in flat windows. On these photos (few flat
    # areas) that stays within 1 % for gray and 0.3 % for Y (same Y formula, only the rounding of
    # halves and the arithmetic differ); on posterised images it does not (test_metrics_calibration).
    assert niqe(img) == pytest.approx(ref["niqe_gray"], rel=0.01)
    assert niqe(img, convert_to="y") == pytest.approx(ref["niqe_y"], rel=0.003)


@pytest.mark.parametrize("key", sorted(REF))
def test_brisque_opencv_flavour_within_1pct_of_opencv(key):
    # 1% relative, with a 0.01 floor on the 0-100 scale for scores the reference clamps at 0
    ref = REF[key]["brisque"]
    assert brisque(_load(key), flavour="opencv") == pytest.approx(ref, rel=0.01, abs=0.01)


def test_blur_raises_niqe_and_brisque():
    for stem in ("flower", "Kleiber_by_Lukas_Baubkus"):
        assert REF[f"{stem}__bicx4"]["niqe_gray"] > REF[stem]["niqe_gray"] + 1  # the reference agrees
        assert niqe(_load(f"{stem}__bicx4")) > niqe(_load(stem)) + 1
        assert brisque(_load(f"{stem}__bicx4")) > brisque(_load(stem)) + 20
        assert brisque(_load(f"{stem}__bicx4"), flavour="opencv") > brisque(_load(stem), flavour="opencv") + 20


# ---------------------------------------------------------------- input formats

def test_uint8_array_and_float_tensor_give_the_same_values():
    rng = np.random.default_rng(3)
    base = np.asarray(Image.fromarray(rng.integers(0, 256, (50, 50, 3), dtype=np.uint8)).resize((200, 200), Image.BICUBIC))
    a = np.clip(base.astype(int) + rng.integers(-30, 30, base.shape), 0, 255).astype(np.uint8)
    b = base
    ta = torch.from_numpy(a).permute(2, 0, 1).float() / 255
    tb = torch.from_numpy(b.copy()).permute(2, 0, 1).float() / 255
    for fn in (psnr, ssim):
        ref = fn(a, b)
        assert fn(ta, tb) == pytest.approx(ref, rel=1e-6)
        assert fn(ta[None], tb[None]) == pytest.approx(ref, rel=1e-6)
        assert fn(ta.double(), b) == pytest.approx(ref, rel=1e-9)
    assert niqe(ta, model=None) == pytest.approx(niqe(a), rel=1e-9)
    assert niqe(ta[None], convert_to="y") == pytest.approx(niqe(a, convert_to="y"), rel=1e-9)
    assert brisque(ta) == brisque(a) == brisque(ta[None])
    assert brisque(ta, flavour="opencv") == brisque(a, flavour="opencv")
    assert niqe(ta, flavour="pyiqa") == niqe(a, flavour="pyiqa")


# ---------------------------------------------------------------- NIQE models

def test_niqe_small_image_with_96px_model_is_a_clear_error():
    img = _rng_image(128, 256)
    with pytest.raises(FewstepError, match=r"at least 192x192 px, got 128x256.*block_size=32"):
        niqe(img)


def test_standard_model_is_the_vendored_basicsr_file(tmp_path):
    m = NiqeModel.standard()
    assert m.block_size == 96 and m.mu.shape == (36,) and m.cov.shape == (36, 36)
    assert np.allclose(m.cov, m.cov.T)
    m.save(tmp_path / "m.npz")
    back = NiqeModel.load(tmp_path / "m.npz")
    assert back.block_size == 96 and np.array_equal(back.mu, m.mu) and np.array_equal(back.cov, m.cov)
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(FewstepError, match="bad.npz"):
        NiqeModel.load(tmp_path / "bad.npz")


def test_fitted_small_block_model_scores_128px_crops_sharp_below_blurred(tmp_path):
    # fit on crops of the training photos, score held-out eval crops at 128x128
    train = sorted((PHOTOS / "train").glob("*.png"))[:8]
    crops = []
    for p in train:
        im = Image.open(p).convert("RGB")
        w, h = im.size
        crops.append(np.asarray(im.crop((w // 2 - 160, h // 2 - 160, w // 2 + 160, h // 2 + 160))))
    model = fit_niqe_model(crops, block_size=32, quiet=True)
    assert model.block_size == 32 and np.all(np.isfinite(model.mu)) and np.all(np.linalg.eigvalsh(model.cov) > -1e-9)
    model.save(tmp_path / "niqe32.npz")
    model = NiqeModel.load(tmp_path / "niqe32.npz")
    for stem in ("flower", "Kleiber_by_Lukas_Baubkus", "EveningGlow"):
        hr = _load(stem)[192:320, 192:320]
        lr = np.asarray(Image.fromarray(hr).resize((32, 32), Image.BICUBIC).resize((128, 128), Image.BICUBIC))
        assert niqe(hr, model) < niqe(lr, model), stem
    # a threshold of 0 keeps every block: a different (broader) model
    loose = fit_niqe_model(crops[:2], block_size=32, sharpness_threshold=0.0)
    strict = fit_niqe_model(crops[:2], block_size=32)
    assert not np.allclose(loose.mu, strict.mu)


def test_fit_niqe_model_rejects_bad_inputs():
    with pytest.raises(FewstepError, match="block_size"):
        fit_niqe_model([_rng_image(64, 64)], block_size=33)
    with pytest.raises(FewstepError, match="at least 96x96"):
        fit_niqe_model([_rng_image(64, 64)], block_size=96)


# ---------------------------------------------------------------- registry

def test_registry_names_and_directions():
    expect = {"psnr": (False, True), "ssim": (False, True), "psnr_y": (False, True), "ssim_y": (False, True),
              "niqe": (True, False), "niqe_pyiqa": (True, False), "niqe_basicsr": (True, False),
              "brisque": (True, False), "brisque_opencv": (True, False), "lpips": (True, True), "dists": (True, True)}
    for name, (lower, needs_ref) in expect.items():
        m = get_metric(name)
        assert (m.name, m.lower_better, m.needs_reference) == (name, lower, needs_ref)
    assert set(expect) <= set(METRICS)
    a, b = _rng_image(seed=4), _rng_image(seed=5)
    assert get_metric("psnr_y")(a, b) == psnr(a, b, y_channel=True)
    assert get_metric("ssim", crop_border=2)(a, b) == ssim(a, b, crop_border=2)
    assert get_metric("PSNRY")(a, b) == psnr(a, b, y_channel=True)
    with pytest.raises(FewstepError, match="unknown metric 'fid'"):
        get_metric("fid")
    with pytest.raises(FewstepError, match="needs a reference"):
        get_metric("psnr")(a)
    with pytest.raises(FewstepError, match="no option 'weights'"):
        get_metric("psnr", weights="x")


# ---------------------------------------------------------------- LPIPS / DISTS (random backbones)

def _save_random_backbone(module_cls, path: Path, extra_classifier: bool = True, **kw):
    torch.manual_seed(0)
    sd = {k: torch.randn_like(v) * 0.05 for k, v in module_cls(**kw).state_dict().items()}
    if extra_classifier:  # torchvision files also carry the classifier; it must be ignored
        sd["classifier.0.weight"] = torch.zeros(4, 4)
    torch.save(sd, path)
    return sd


def test_lpips_and_dists_with_random_backbones(tmp_path):
    from fewstep.metrics.deep import ALEXNET, VGG16, AlexNetFeatures, VGG16Features, load_backbone, load_lpips

    alex = _save_random_backbone(AlexNetFeatures, tmp_path / ALEXNET.filename)
    _save_random_backbone(VGG16Features, tmp_path / VGG16.filename)
    a = _rng_image(32, 32, seed=6)
    b = np.clip(a.astype(int) + 40, 0, 255).astype(np.uint8)
    for name in ("lpips", "lpips-vgg", "dists"):
        m = get_metric(name, weights=tmp_path)
        assert m(a, a) == pytest.approx(0.0, abs=1e-6), name
        assert m(a, b) > 1e-4, name
    m = get_metric("lpips", weights=tmp_path)
    assert m(a, b) == pytest.approx(m(b, a), rel=1e-5)  # a symmetric distance
    # the torchvision keys really were loaded (not left at random init)
    model = load_lpips("alex", str(tmp_path))
    assert torch.equal(model.backbone.features[3].weight, alex["features.3.weight"])
    # the vendored LPIPS heads are the calibrated, non-negative ones
    assert all(float(h.weight.min()) >= 0 for h in model.heads) and float(model.heads[0].weight.sum()) > 0
    # strict key checking
    bad = dict(alex)
    bad["features.99.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="features.99.weight"):
        load_backbone(AlexNetFeatures(), tmp_path / "bad.pth")
    del alex["features.10.bias"]
    torch.save(alex, tmp_path / "short.pth")
    with pytest.raises(CheckpointError, match="missing key features.10.bias"):
        load_backbone(AlexNetFeatures(), tmp_path / "short.pth")


def test_missing_backbone_names_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSTEP_OFFLINE", "1")
    monkeypatch.setenv("FEWSTEP_HOME", str(tmp_path / "home"))
    empty = tmp_path / "weights"
    empty.mkdir()
    a = _rng_image(32, 32)
    with pytest.raises(WeightsNotFoundError, match=f"put alexnet-owt-7be5be79.pth in {empty}"):
        get_metric("lpips", weights=empty)(a, a)
    with pytest.raises(WeightsNotFoundError, match=f"put vgg16-397923af.pth in {empty}"):
        get_metric("dists", weights=empty)(a, a)
