"""The benchmark scripts run (tiny CPU modes), so they cannot rot between GPU sessions.

Nothing here is timed: speed lives in the benchmarks' own output.
"""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
pytestmark = pytest.mark.usefixtures("one_thread")


def _load(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_gpu_bench_cpu_smoke_writes_a_complete_table(tmp_path):
    out = tmp_path / "speed.md"
    text = _load("gpu_bench").main(["--cpu-smoke", "--out", str(out)])
    assert out.read_text() == text
    rows = [r for r in text.splitlines() if r.startswith("| ResShift-v3 |") or r.startswith("| S3Diff |")]
    timing = [r.split("|")[1:-1] for r in rows if r.count("|") == 10]
    # both models, both sizes, batch 1 and 2, fp32 eager; the graph wrapper (a fall-through on CPU) once
    for model in ("ResShift-v3", "S3Diff"):
        for size, batch in (("16 → 64", "1"), ("16 → 64", "2"), ("24 → 96", "1"), ("24 → 96", "2")):
            assert any(c[0].strip() == model and c[1].strip() == size and c[2].strip() == batch
                       and c[3].strip() == "fp32" and c[4].strip() == "eager" for c in timing), (model, size, batch)
        assert any(c[0].strip() == model and c[4].strip() == "graphs" for c in timing)
    for c in timing:
        ms, ips = float(c[5]), float(c[6])
        assert ms > 0 and math.isclose(ips, 1000 / ms, rel_tol=0.02)
    diffs = [r.split("|")[1:-1] for r in rows if "bf16 vs fp32" in r]
    assert len(diffs) == 4
    for d in diffs:  # bf16 changes the output, but it is still an image of the same content
        mx, mean, psnr = float(d[3]), float(d[4]), float(d[5])
        assert 0 < mean <= mx <= 1 and psnr > 10
    assert "Failed cases" not in text


def test_cuda_graph_wrapper_falls_through_off_cuda():
    import torch

    from fewstep.nn.speed import CudaGraphed, cuda_graph_forward, restore_forward

    lin = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    ref = lin(x)
    g = cuda_graph_forward(lin)
    assert isinstance(g, CudaGraphed)
    with torch.no_grad():
        assert torch.equal(lin(x), ref)
    assert g.graphs == {}  # nothing captured on the CPU
    restore_forward(lin)
    assert "forward" not in lin.__dict__ and torch.equal(lin(x), ref)


def test_resshift_speed_memory_mode_reports_peak_rss(capsys):
    bench = _load("resshift_speed")
    sys.argv = ["resshift_speed.py", "--memory", "--model", "tiny", "--memory-size", "32", "--tile", "16",
                "--overlap", "8", "--threads", "1"]
    bench.main()
    out = capsys.readouterr().out
    row = [r for r in out.splitlines() if r.startswith("| 32 -> 128")]
    assert row, out
    cells = [c.strip() for c in row[0].split("|")[1:-1]]
    assert cells[2] == "9" and float(cells[5]) > 0.05 and cells[6] == "OK"
    assert re.search(r"torch \d", out)


def test_every_attention_runs_through_sdpa(monkeypatch):
    """Swin windows, the VQ mid-block attention and every diffusers attention use
    F.scaled_dot_product_attention (flash / memory-efficient kernels on a GPU), none a softmax."""
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0

    from fewstep.resshift.unet import SwinBlock, SwinUNet
    from fewstep.resshift.vq import VQModel

    bc = _load("bench_common")
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    monkeypatch.setattr(F, "softmax", lambda *a, **k: pytest.fail("explicit softmax attention"))
    torch.manual_seed(0)
    unet, vq = SwinUNet(**bc.TINY_UNET).eval(), VQModel(**bc.TINY_VQ).eval()
    with torch.no_grad():
        unet(torch.randn(1, 3, 16, 16), torch.tensor([1]), lq=torch.randn(1, 3, 16, 16))
        assert len(calls) == sum(isinstance(m, SwinBlock) for m in unet.modules()) > 0
        calls.clear()
        vq.decode(vq.encode(torch.randn(1, 3, 32, 32)))
        assert len(calls) == 2  # encoder and decoder mid-block attention
    for net in (UNet2DConditionModel(**bc.TINY_SD_UNET), AutoencoderKL(**bc.TINY_SD_VAE)):
        procs = net.attn_processors.values()
        assert procs and all(isinstance(p, AttnProcessor2_0) for p in procs)


@pytest.mark.parametrize("autocast", [False, True])
def test_inplace_inference_path_is_bit_identical(autocast):
    """The in-place elementwise ops used when autograd is off (fewstep.nn.speed.INPLACE) give
    exactly the numbers of the out-of-place ops, in fp32 and under bf16 autocast. (Compared under
    no_grad both: with autograd on, CPU SDPA picks another kernel, which differs in the last bits.)"""
    import contextlib

    import torch

    from fewstep.nn import speed
    from fewstep.resshift.unet import SwinUNet
    from fewstep.resshift.vq import VQModel

    bc = _load("bench_common")
    torch.manual_seed(0)
    unet, vq = SwinUNet(**bc.TINY_UNET).eval(), VQModel(**bc.TINY_VQ).eval()
    x, lq, img = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16), torch.randn(2, 3, 32, 32)
    t = torch.tensor([1, 0])
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if autocast else contextlib.nullcontext

    def run():
        with ctx():
            return unet(x, t, lq=lq), vq.decode(vq.encode(img), force_not_quantize=True), vq.encode(img)

    with torch.no_grad():
        assert speed.inplace_ok()
        fast = run()
        speed.INPLACE = False
        try:
            assert not speed.inplace_ok()
            ref = run()  # the out-of-place ops of the training path
        finally:
            speed.INPLACE = True
    for a, b in zip(ref, fast):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert ref[0].abs().max() > 0 and ref[1].std() > 0


def test_fast_upsample_equals_nearest_then_conv():
    """The parity-decomposed nearest-x2 + 3x3 conv (fewer FLOPs) matches the two-op form, alone
    and inside the VQ decoder and UNet, with odd sizes and borders included."""
    import torch
    import torch.nn.functional as F

    from fewstep.nn import speed
    from fewstep.resshift.unet import SwinUNet
    from fewstep.resshift.vq import VQModel

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 5, 3, padding=1)
    x = torch.randn(2, 6, 7, 10)
    with torch.no_grad():
        ref = conv(F.interpolate(x, scale_factor=2, mode="nearest"))
        out = speed.upsample2x_conv3x3(x, conv)
    assert out.shape == ref.shape and (out - ref).abs().max() <= 1e-5 * ref.abs().max()
    bc = _load("bench_common")
    unet, vq = SwinUNet(**bc.TINY_UNET).eval(), VQModel(**bc.TINY_VQ).eval()
    z, lq = torch.randn(1, 3, 16, 16), torch.randn(1, 3, 16, 16)
    outs = []
    for flag in (False, True):
        speed.FAST_UPSAMPLE = flag
        try:
            with torch.no_grad():
                outs.append((vq.decode(z, force_not_quantize=True), unet(z, torch.tensor([1]), lq=lq)))
        finally:
            speed.FAST_UPSAMPLE = False
    for a, b in zip(*outs):
        assert not torch.equal(a, b) and (a - b).abs().max() <= 1e-5 * a.abs().max()
    with torch.no_grad():
        conv.weight.mul_(2)  # a weight changed in place is not served from the cache
        assert torch.allclose(speed.upsample2x_conv3x3(x, conv), conv(F.interpolate(x, scale_factor=2)), atol=1e-5)


def test_pipeline_puts_only_the_vq_decoder_in_channels_last():
    """NHWC conv weights after the quantiser (faster oneDNN kernels), none before it: the encoder
    and UNet keep the reference arithmetic, so the VQ codes chosen stay the same; the decoded image
    matches the NCHW decoder to fp32 rounding."""
    import copy

    import torch

    from fewstep.resshift.chain import ResShiftChain
    from fewstep.resshift.pipeline import ResShiftPipeline
    from fewstep.resshift.unet import SwinUNet
    from fewstep.resshift.vq import VQModel

    bc = _load("bench_common")
    torch.manual_seed(0)
    unet, vq = SwinUNet(**bc.TINY_UNET).eval(), VQModel(**bc.TINY_VQ).eval()
    nchw = copy.deepcopy(vq)
    ResShiftPipeline(unet, vq, ResShiftChain(**bc.TINY_CHAIN))

    def conv_weights(m):
        return [p for p in m.parameters() if p.dim() == 4]

    assert all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
               for w in conv_weights(vq.decoder) if w.shape[-1] > 1)
    assert all(w.is_contiguous() for w in conv_weights(vq.encoder) + conv_weights(unet))
    img = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        z = nchw.encode(img)
        assert torch.equal(vq.encode(img), z)
        ref, out = nchw.decode(z), vq.decode(z)
    assert out.shape == ref.shape and (out - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_conv_layouts_winograd_matches_conv2d_and_the_table_prints(monkeypatch, capsys):
    """benchmarks/conv_layouts.py: its F(2x2, 3x3) Winograd convolution equals conv2d to fp32
    rounding (any strip height, odd channel counts), and the script prints a full table."""
    import torch
    import torch.nn.functional as F

    cl = _load("conv_layouts")
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 5, 12, 16), torch.randn(7, 5, 3, 3), torch.randn(7)
    ref = F.conv2d(x, w, b, padding=1)
    for rows in (1, 4, 100):
        out = cl.winograd_conv3x3(x, cl.winograd_weight(w), b, rows=rows)
        assert out.shape == ref.shape and (out - ref).abs().max() <= 1e-5 * ref.abs().max()
    monkeypatch.setattr(cl, "SHAPES", ((8, 32), (16, 16)))
    monkeypatch.setattr(sys, "argv", ["conv_layouts.py", "--threads", "1", "--repeats", "1"])
    cl.main()
    rows = [ln for ln in capsys.readouterr().out.splitlines() if re.match(r"\| \d+ \|", ln)]
    assert len(rows) == 2 and all(len(r.strip("|").split("|")) == 8 for r in rows)
