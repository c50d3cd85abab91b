"""fewstep.degrade: kernels, noise, JPEG, MATLAB imresize, presets, masks, reproducibility."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import PHOTOS
from PIL import Image

from fewstep.degrade import PRESETS, degrade, degrade_batch, degrade_one, imresize, random_mask
from fewstep.degrade import kernels as K
from fewstep.degrade.jpeg import jpeg_uint8
from fewstep.degrade.noise import gaussian_noise, poisson_noise
from fewstep.errors import FewstepError

PHOTO = PHOTOS / "eval" / "flower.png"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    if PHOTO.exists():
        return np.asarray(Image.open(PHOTO).convert("RGB"))[128:256, 160:288].copy()
    rng = np.random.default_rng(0)  # fallback: smooth random texture
    x = rng.uniform(0, 255, (16, 16, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(x).resize((128, 128), Image.BICUBIC))


# --------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("size", [3, 7, 21, 41])
def test_kernel_sums_and_shapes(size):
    ks = [
        K.gaussian_kernel(size, 1.3),
        K.gaussian_kernel(size, 2.0, 0.7, 0.4),
        K.generalized_gaussian_kernel(size, 1.5, 0.9, -1.0, beta=0.6),
        K.generalized_gaussian_kernel(size, 1.5, beta=3.0),
        K.plateau_kernel(size, 1.2, beta=1.5),
        K.plateau_kernel(size, 2.2, 0.8, 2.0, beta=1.2),
        K.sinc_kernel(size, math.pi / 3),
    ]
    for k in ks:
        assert k.shape == (size, size)
        assert abs(k.sum() - 1.0) < 1e-12
        assert np.unravel_index(np.argmax(k), k.shape) == (size // 2, size // 2)


def test_kernel_rejects_even_size():
    with pytest.raises(FewstepError, match="odd"):
        K.gaussian_kernel(8, 1.0)


def test_isotropic_kernels_symmetric():
    for k in (K.gaussian_kernel(15, 2.1), K.generalized_gaussian_kernel(15, 2.1, beta=0.7), K.plateau_kernel(15, 1.4, beta=1.7)):
        np.testing.assert_allclose(k, k.T, atol=1e-15)
        np.testing.assert_allclose(k, k[::-1], atol=1e-15)
        np.testing.assert_allclose(k, k[:, ::-1], atol=1e-15)


@pytest.mark.parametrize("theta", [0.0, 0.6, -1.2, 2.5])
def test_anisotropic_gaussian_rotation(theta):
    # second moments of the kernel (x = column offset, y = row offset) must equal R diag(sx², sy²) Rᵀ
    sx, sy, size = 4.0, 1.5, 41
    k = K.gaussian_kernel(size, sx, sy, theta)
    r = np.arange(size) - size // 2
    x, y = np.meshgrid(r, r)
    cov = np.array([[(k * x * x).sum(), (k * x * y).sum()], [(k * x * y).sum(), (k * y * y).sum()]])
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    expected = rot @ np.diag([sx**2, sy**2]) @ rot.T
    # a sampled Gaussian's variance is σ² + O(e^{-2π²σ²}); truncation at ±20 px is negligible
    np.testing.assert_allclose(cov, expected, atol=2e-3)
    # principal axis direction
    evals, evecs = np.linalg.eigh(cov)
    v = evecs[:, 1]
    angle = math.atan2(v[1], v[0])
    assert abs(math.sin(angle - theta)) < 1e-3


def test_generalized_and_plateau_formulas():
    np.testing.assert_allclose(K.generalized_gaussian_kernel(11, 1.7, beta=1.0), K.gaussian_kernel(11, 1.7), atol=1e-15)
    k = K.plateau_kernel(11, 2.0, beta=1.5)
    # neighbour one pixel right of the centre: d²/σ² = 1/4 -> ratio 1 / (1 + 0.25^1.5)
    assert abs(k[5, 6] / k[5, 5] - 1.0 / (1.0 + 0.25**1.5)) < 1e-12
    g = K.generalized_gaussian_kernel(11, 2.0, beta=2.0)
    # two pixels down: d²/σ² = 1 -> exp(-0.5 * 1^2)
    assert abs(g[7, 5] / g[5, 5] - math.exp(-0.5)) < 1e-12


@pytest.mark.parametrize("size,cutoff,low_tol,high_max", [(21, math.pi / 2, 0.15, 0.08), (41, math.pi / 3, 0.15, 0.07)])
def test_sinc_cutoff(size, cutoff, low_tol, high_max):
    k = K.sinc_kernel(size, cutoff)
    mag = np.abs(np.fft.fft2(k, (256, 256)))
    f = np.fft.fftfreq(256) * 2 * math.pi
    w = np.hypot(*np.meshgrid(f, f))
    low = mag[w < 0.5 * cutoff]
    assert np.all(np.abs(low - 1.0) < low_tol)
    assert mag[w > 1.25 * cutoff].max() < high_max
    assert abs(mag[0, 0] - 1.0) < 1e-12


def test_random_kernel_probabilities():
    rng = np.random.default_rng(0)
    p = PRESETS["resshift"].first
    n = 4000
    kinds = [K.random_kernel(rng, 21, p.kernel_list, p.kernel_prob, p.blur_sigma, p.betag_range, p.betap_range)[1]["type"] for _ in range(n)]
    for name, prob in zip(p.kernel_list, p.kernel_prob):
        frac = kinds.count(name) / n
        assert abs(frac - prob) < 4 * math.sqrt(prob * (1 - prob) / n) + 1e-9, name
    sinc = [K.random_blur_or_sinc(rng, p.kernel_sizes, p.sinc_prob, p.kernel_list, p.kernel_prob, p.blur_sigma, p.betag_range, p.betap_range)[1] for _ in range(2000)]
    assert abs(sum(d["type"] == "sinc" for d in sinc) / 2000 - 0.1) < 0.03
    assert {d["size"] for d in sinc} == set(p.kernel_sizes)


# --------------------------------------------------------------------------- noise and JPEG


@pytest.mark.parametrize("gray", [False, True])
def test_gaussian_noise_statistics(gray):
    img = torch.full((3, 128, 128), 0.5)
    g = torch.Generator().manual_seed(1)
    n = gaussian_noise(img, 10.0, gray, g)
    assert abs(n.std().item() / (10.0 / 255.0) - 1.0) < 0.03
    assert abs(n.mean().item()) < 3 * (10.0 / 255.0) / 128
    if gray:
        assert torch.equal(n[0], n[1]) and torch.equal(n[1], n[2])
    else:
        assert not torch.equal(n[0], n[1])


def test_poisson_variance_scales_with_intensity():
    img = torch.zeros(3, 128, 256)
    img[:, :, :128] = 51 / 255  # 0.2
    img[:, :, 128:] = 204 / 255  # 0.8
    scale = 2.0
    n = poisson_noise(img, scale, False, torch.Generator().manual_seed(3))
    vals = 2.0  # two distinct 8-bit levels -> 2^ceil(log2 2) photons per unit intensity
    for sl, level in ((slice(0, 128), 51 / 255), (slice(128, 256), 204 / 255)):
        var = n[:, :, sl].double().var().item()
        assert abs(var / (level / vals * scale**2) - 1.0) < 0.05
    ratio = n[:, :, 128:].var() / n[:, :, :128].var()
    assert abs(ratio.item() - 4.0) < 0.3
    ng = poisson_noise(img, scale, True, torch.Generator().manual_seed(3))
    assert torch.equal(ng[0], ng[2])


def test_jpeg_quality_monotone(photo):
    errs = [np.abs(jpeg_uint8(photo, q).astype(float) - photo).mean() for q in (10, 30, 60, 95)]
    assert errs[0] > errs[1] > errs[2] > errs[3] > 0
    with pytest.raises(FewstepError):
        jpeg_uint8(photo, 0)


# --------------------------------------------------------------------------- MATLAB imresize


def _ref_cubic(t: float) -> float:
    t = abs(t)
    if t <= 1:
        return 1.5 * t**3 - 2.5 * t**2 + 1
    if t <= 2:
        return -0.5 * t**3 + 2.5 * t**2 - 4 * t + 2
    return 0.0


def _ref_resize_1d(v: np.ndarray, n_out: int, s: float) -> np.ndarray:
    """Independent scalar loop: 0-based centres, symmetric reflection by index arithmetic."""
    n = len(v)
    out = np.zeros(n_out)
    aa = s < 1
    support = 2.0 / s if aa else 2.0
    for i in range(n_out):
        centre = (i + 0.5) / s - 0.5
        acc = wsum = 0.0
        for j in range(int(math.floor(centre - support)) - 1, int(math.ceil(centre + support)) + 2):
            d = centre - j
            w = s * _ref_cubic(s * d) if aa else _ref_cubic(d)
            if w == 0.0:
                continue
            jj = j
            while jj < 0 or jj >= n:  # symmetric: -1 -> 0, n -> n-1
                jj = -jj - 1 if jj < 0 else 2 * n - 1 - jj
            acc += w * v[jj]
            wsum += w
        out[i] = acc / wsum
    return out


def _ref_imresize(a: np.ndarray, oh: int, ow: int, sh: float, sw: float) -> np.ndarray:
    tmp = np.stack([_ref_resize_1d(a[:, c], oh, sh) for c in range(a.shape[1])], axis=1)
    return np.stack([_ref_resize_1d(tmp[r], ow, sw) for r in range(oh)], axis=0)


@pytest.mark.parametrize(
    "shape,scale,out_shape",
    [((13, 11), 0.25, (4, 3)), ((16, 16), 0.25, (4, 4)), ((9, 7), 0.5, (5, 4)), ((5, 6), 2.0, (10, 12)), ((7, 5), 3.0, (21, 15)), ((10, 9), 1 / 3, (4, 3))],
)
def test_imresize_matches_reference(shape, scale, out_shape):
    rng = np.random.default_rng(sum(shape))
    a = rng.uniform(0, 1, shape)
    got = imresize(a, scale)
    assert got.shape == out_shape  # MATLAB: ceil(scale * size)
    ref = _ref_imresize(a, *out_shape, scale, scale)
    assert np.abs(got - ref).max() < 1e-6


def test_imresize_output_shape_and_channels():
    rng = np.random.default_rng(5)
    a = rng.uniform(0, 1, (11, 13, 3))
    got = imresize(a, output_shape=(5, 8))
    assert got.shape == (5, 8, 3)
    for c in range(3):
        ref = _ref_imresize(a[..., c], 5, 8, 5 / 11, 8 / 13)
        assert np.abs(got[..., c] - ref).max() < 1e-6
    # torch path (any leading dims) equals the numpy path
    t = imresize(torch.from_numpy(a).permute(2, 0, 1)[None], output_shape=(5, 8))
    np.testing.assert_allclose(t[0].permute(1, 2, 0).numpy(), got, atol=1e-12)
    # constants stay constant (weights sum to 1, also at the mirrored borders)
    np.testing.assert_allclose(imresize(np.full((9, 9), 0.3), 0.37), 0.3, atol=1e-12)


def test_imresize_published_matlab_values():
    # MATLAB R20xx: imresize([1 2;3 4],[4 4],'bilinear') and imresize(that,[2 2],'bilinear'),
    # as quoted in a Stack Overflow question comparing cv2.resize with MATLAB.
    up = imresize(np.array([[1.0, 2], [3, 4]]), output_shape=(4, 4), method="bilinear")
    np.testing.assert_allclose(up, [[1, 1.25, 1.75, 2], [1.5, 1.75, 2.25, 2.5], [2.5, 2.75, 3.25, 3.5], [3, 3.25, 3.75, 4]], atol=1e-12)
    down = imresize(up, output_shape=(2, 2), method="bilinear")
    np.testing.assert_allclose(down, [[1.5625, 2.1875], [2.8125, 3.4375]], atol=1e-12)


def test_imresize_uint8(photo):
    small = imresize(photo, 0.25)
    assert small.dtype == np.uint8 and small.shape == (32, 32, 3)
    # MATLAB's uint8 path rounds (half away from zero) and saturates after each axis pass
    for c in range(3):
        rows = np.stack([_ref_resize_1d(photo[:, j, c].astype(float), 32, 0.25) for j in range(128)], axis=1)
        rows = np.clip(np.floor(rows + 0.5), 0, 255)
        ref = np.stack([_ref_resize_1d(rows[i], 32, 0.25) for i in range(32)], axis=0)
        np.testing.assert_array_equal(small[..., c], np.clip(np.floor(ref + 0.5), 0, 255))
    with pytest.raises(FewstepError):
        imresize(photo, 0.25, output_shape=(3, 3))


# --------------------------------------------------------------------------- pipeline


@pytest.mark.parametrize("preset", ["resshift", "resshift-test", "s3diff", "bicubic", "faceir"])
def test_degrade_reproducible(photo, preset):
    a = degrade(photo, preset=preset, scale=4, seed=7)
    b = degrade(photo, preset=preset, scale=4, seed=7)
    c = degrade(photo, preset=preset, scale=4, seed=8)
    expect = photo.shape if preset == "faceir" else (32, 32, 3)
    assert a.shape == expect and a.dtype == np.uint8
    assert a.tobytes() == b.tobytes()
    if preset != "bicubic":
        assert a.tobytes() != c.tobytes()


def test_degrade_varies_and_is_plausible(photo):
    # LR stays close to the bicubic LR on average (same content), but seeds give different draws
    bic = degrade(photo, "bicubic", 4).astype(float)
    errs = [np.abs(degrade(photo, "resshift-test", 4, s).astype(float) - bic).mean() for s in range(4)]
    assert all(0 < e < 25 for e in errs)
    assert len(set(np.round(errs, 6))) == 4


def test_batch_equals_single(photo):
    x = torch.from_numpy(photo[:64, :64].copy()).permute(2, 0, 1).float() / 255.0
    hr = torch.stack([x, x.flip(-1), x.flip(-2)])
    seeds = [11, 12, 13]
    for preset in ("resshift", "s3diff"):
        out = degrade_batch(hr, preset, 4, seeds=seeds)
        assert out.shape == (3, 3, 16, 16)
        for i in range(3):
            assert torch.equal(out[i], degrade_one(hr[i], preset, 4, seeds[i]))
        # batch of one with the same seed
        assert torch.equal(degrade_batch(hr[1:2], preset, 4, seeds=[12])[0], out[1])
    g1 = degrade_batch(hr, "resshift", 4, generator=torch.Generator().manual_seed(0))
    g2 = degrade_batch(hr, "resshift", 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(g1, g2)
    r = degrade_batch(hr, "resshift", 4, seeds=seeds)
    assert torch.equal(r, torch.round(r * 255) / 255)  # 8-bit levels
    assert float(r.min()) >= 0 and float(r.max()) <= 1


def test_degrade_errors(photo):
    with pytest.raises(FewstepError, match="unknown degradation preset"):
        degrade(photo, "nope")
    with pytest.raises(FewstepError, match="multiple of scale"):
        degrade(photo[:127], "resshift", 4)
    with pytest.raises(FewstepError):
        degrade_batch(torch.zeros(2, 3, 16, 16), "resshift", 4)  # no seeds, no generator


def test_presets_match_spec():
    r = PRESETS["resshift"]
    assert r.first.kernel_sizes[0] == 3 and r.first.kernel_sizes[-1] == 21
    assert r.first.blur_sigma == (0.2, 3.0) and r.first.resize_range == (0.15, 1.5)
    assert r.second_order_prob == 0.5 and r.second.blur_prob == 0.8 and r.final.sinc_prob == 0.8
    t = PRESETS["resshift-test"]
    assert t.second_order_prob == 0.0 and t.first.blur_sigma == (0.2, 0.8)
    assert t.first.noise_range == (1.0, 15.0) and t.first.jpeg_range == (70.0, 95.0)
    s = PRESETS["s3diff"]
    assert s.first.noise_range == (1.0, 15.0) and s.second.resize_range == (0.6, 1.2) and not s.round_output
    f = PRESETS["faceir"]
    assert f.kernel_size == 41 and f.downsample_range == (0.8, 32.0) and f.jpeg_range == (30.0, 100.0)


def test_second_order_statistics(photo):
    # resshift applies the second stage to about half of the samples; resshift-test never does
    # (the draws do not depend on image content, so a small image keeps this fast)
    x = torch.from_numpy(photo[:32, :32].copy()).permute(2, 0, 1).float() / 255.0
    logs: list = []
    degrade_batch(x[None].repeat(40, 1, 1, 1), "resshift", 4, seeds=list(range(40)), logs=logs)
    n2 = sum("second" in lg for lg in logs)
    assert 10 <= n2 <= 30  # Binomial(40, 0.5): outside this range with probability < 0.2 %
    logs = []
    degrade_batch(x[None].repeat(10, 1, 1, 1), "resshift-test", 4, seeds=list(range(10)), logs=logs)
    assert not any("second" in lg for lg in logs)
    assert all(70 <= lg["first"]["jpeg"] <= 95 and 0.2 <= lg["first"]["kernel"].get("sigma_x", 0.5) <= 0.8 for lg in logs)


# --------------------------------------------------------------------------- masks


def test_mask_coverage_ranges():
    n, size = 150, 256
    cov = {k: [] for k in ("irregular", "box", "outpainting")}
    for kind in cov:
        for s in range(n):
            m = random_mask(kind, size, seed=s)
            assert m.shape == (size, size) and m.dtype == np.float32
            assert set(np.unique(m)) <= {0.0, 1.0}
            cov[kind].append(m.mean())
            if kind == "box":  # boxes keep a 10 px margin
                assert m[:10].sum() == 0 and m[-10:].sum() == 0 and m[:, :10].sum() == 0 and m[:, -10:].sum() == 0
    # box: 1..4 boxes with sides in [30, 150]
    assert min(cov["box"]) >= 30 * 30 / size**2 and max(cov["box"]) <= min(1.0, 4 * 150**2 / size**2)
    # outpainting: ≥ one strip of ≥ 4 %; at most 25 % from each of the four sides
    assert min(cov["outpainting"]) >= 0.04 - 1 / size and max(cov["outpainting"]) <= 1 - 0.5**2 + 2 / size
    # irregular: never empty, never everything; documented typical range
    assert min(cov["irregular"]) > 0.005 and max(cov["irregular"]) < 0.95
    assert 0.1 < np.mean(cov["irregular"]) < 0.7
    np.testing.assert_array_equal(random_mask("irregular", 64, 3), random_mask("irregular", 64, 3))


def test_mixed_mask_uses_all_kinds():
    from fewstep.degrade.masks import MixedMaskGenerator

    kinds = set()
    for s in range(60):
        m = MixedMaskGenerator()((128, 96), s)
        assert m.shape == (128, 96)
        on_border = m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any()
        kinds.add("outpaint-or-stroke" if on_border else "inner")
    assert kinds == {"outpaint-or-stroke", "inner"}
    only_box = MixedMaskGenerator(0, 1, 0)
    assert all(only_box(64, s)[:10].sum() == 0 for s in range(10))
    with pytest.raises(FewstepError):
        random_mask("triangle", 64)


# --------------------------------------------------------------------------- make-testset


def test_make_testset(tmp_path, photo):
    from fewstep.degrade.testset import make_testset

    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(photo).save(src / "a.png")
    Image.fromarray(photo[:100, :90]).save(src / "b.png")
    out = tmp_path / "out"
    rec = make_testset(src, out, "resshift-test", 4, seed=3, crop=64, quiet=True)
    assert sorted(p.name for p in (out / "hr").iterdir()) == ["a.png", "b.png"]
    for name in ("a.png", "b.png"):
        assert np.asarray(Image.open(out / "hr" / name)).shape == (64, 64, 3)
        assert np.asarray(Image.open(out / "lr" / name)).shape == (16, 16, 3)
    meta = json.loads((out / "testset.json").read_text())
    assert meta["seed"] == 3 and meta["preset"] == "resshift-test" and meta["parameters"]["first"]["jpeg_range"] == [70.0, 95.0]
    # the recorded per-image seed regenerates the LR exactly
    img0 = meta["images"][0]
    hr0 = np.asarray(Image.open(out / "hr" / img0["name"]))
    lr0 = np.asarray(Image.open(out / "lr" / img0["name"]))
    assert np.array_equal(degrade(hr0, "resshift-test", 4, img0["seed"]), lr0)
    assert rec["images"][1]["seed"] != img0["seed"]
    with pytest.raises(FewstepError, match="overwrite"):
        make_testset(src, out, quiet=True)
    make_testset(src, out, "bicubic", 4, crop=None, overwrite=True, quiet=True)
    assert np.asarray(Image.open(out / "lr" / "b.png")).shape == (25, 22, 3)
