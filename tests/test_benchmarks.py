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


def test_resshift_speed_output_check_separates_code_ties_from_real_differences():
    """benchmarks/resshift_speed.check_outputs: continuous parts within tolerance, a differing VQ
    code accepted only when the reference latent sits on a tie within the latent difference."""
    import torch

    bench = _load("resshift_speed")
    book = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [5.0, 5.0, 5.0]])

    def outs(x0, codes, image_shift=0.0):
        latent = torch.zeros(1, 3, 1, 2)
        latent[0, 0, 0, 0] = x0
        latent[0, :, 0, 1] = torch.tensor([5.0, 5.0, 4.9])
        return {"latent": latent, "codes": torch.tensor([[codes]]), "codebook": book,
                "decoded_common": torch.ones(1, 3, 4, 8), "image": torch.ones(1, 3, 4, 8) + image_shift}

    ref = outs(0.5 - 1e-7, [0, 2])
    ok, lines = bench.check_outputs(ref, outs(0.5 + 1e-7, [1, 2], image_shift=0.3), 1e-4)  # a tie flipped
    assert ok and "1 of 2 differ" in lines[1] and "not judged" in lines[-1], lines
    ok, lines = bench.check_outputs(outs(0.3, [0, 2]), outs(0.3 + 1e-7, [1, 2]), 1e-4)  # not a tie
    assert not ok and "NOT all ties" in lines[1], lines
    ok, lines = bench.check_outputs(ref, outs(0.5 - 1e-7 + 1e-3, [0, 2]), 1e-4)  # the latent itself moved
    assert not ok and "FAIL" in lines[0], lines
    ok, lines = bench.check_outputs(ref, outs(0.5 - 1e-7, [0, 2], image_shift=1e-3), 1e-4)  # same codes, image off
    assert not ok and lines[1] == "VQ codes: all 2 equal" and "FAIL" in lines[-1], lines
    ok, lines = bench.check_outputs(ref, outs(0.5 - 1e-7, [0, 2], image_shift=5e-5), 1e-4)
    assert ok, lines


def test_resshift_speed_compare_runs_two_trees(capsys):
    """`--compare HEAD` on the tiny architecture: a git worktree of HEAD and this tree, the stage
    table with GFLOP counted (attention included), and the output check."""
    import shutil
    import subprocess

    if shutil.which("git") is None or subprocess.run(["git", "-C", str(BENCH), "rev-parse", "HEAD"],
                                                     capture_output=True).returncode != 0:
        pytest.skip("needs a git checkout")
    bench = _load("resshift_speed")
    sys.argv = ["resshift_speed.py", "--compare", "HEAD", "--model", "tiny", "--sizes", "64", "--repeats", "1",
                "--threads", "1"]
    bench.main()
    out = capsys.readouterr().out
    rows = {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]] for r in out.splitlines()
            if r.startswith("| VQ ") or r.startswith("| Swin") or r.startswith("| total")}
    assert set(rows) == {"VQ encoder", "Swin UNet / step", "Swin UNet, all steps", "VQ decoder", "total"}, out
    gflop = {k: float(v[0]) for k, v in rows.items()}
    assert gflop["total"] == pytest.approx(gflop["VQ encoder"] + gflop["Swin UNet, all steps"] + gflop["VQ decoder"], abs=0.16)
    assert gflop["VQ encoder"] > 5 and gflop["VQ decoder"] > 10  # the 3x3 convs are counted (direct-conv FLOPs)
    for cells in rows.values():
        assert float(cells[1]) > 0 and float(cells[4]) > 0 and cells[-1].startswith("x")
    assert "ref vs new, fp32 tolerance 0.0001" in out and "- decoder on common codes: max |Δ|" in out, out


def test_flop_counter_counts_cpu_attention():
    """bench_common.flop_counter adds the CPU SDPA kernel torch's counter skips: 4 N^2 d per attention."""
    import torch

    bc = _load("bench_common")
    q = torch.randn(1, 1, 64, 16)
    with torch.no_grad(), bc.flop_counter() as fc:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert fc.get_total_flops() == 4 * 64 * 64 * 16


def _tiny_pipeline_parts():
    import torch

    from fewstep.resshift.unet import SwinUNet
    from fewstep.resshift.vq import VQModel

    bc = _load("bench_common")
    torch.manual_seed(0)
    return SwinUNet(**bc.TINY_UNET).eval(), VQModel(**bc.TINY_VQ).eval(), bc


def test_every_attention_runs_through_sdpa(monkeypatch):
    """Swin windows, the VQ mid-block attention and every diffusers attention use
    F.scaled_dot_product_attention (flash / memory-efficient kernels on a GPU), none a softmax."""
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0

    from fewstep.resshift.unet import SwinBlock

    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    monkeypatch.setattr(F, "softmax", lambda *a, **k: pytest.fail("explicit softmax attention"))
    unet, vq, bc = _tiny_pipeline_parts()
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

    unet, vq, _ = _tiny_pipeline_parts()
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
    outs, default = [], speed.FAST_UPSAMPLE
    assert default  # on by default at inference
    for flag in (False, True):
        speed.FAST_UPSAMPLE = flag
        try:
            with torch.no_grad():
                outs.append((vq.decode(z, force_not_quantize=True), unet(z, torch.tensor([1]), lq=lq)))
        finally:
            speed.FAST_UPSAMPLE = default
    for a, b in zip(*outs):
        assert not torch.equal(a, b) and (a - b).abs().max() <= 1e-5 * a.abs().max()
    # NHWC (the pipeline's VQ layout): the same numbers, and the output stays NHWC for the next conv
    conv_cl = speed.channels_last(torch.nn.Conv2d(6, 5, 3, padding=1))
    conv_cl.load_state_dict(conv.state_dict())
    with torch.no_grad():
        out_cl = speed.upsample2x_conv3x3(x.contiguous(memory_format=torch.channels_last), conv_cl)
    assert out_cl.is_contiguous(memory_format=torch.channels_last) and not out_cl.is_contiguous()
    assert (out_cl - ref).abs().max() <= 1e-5 * ref.abs().max()
    with torch.no_grad():
        conv.weight.mul_(2)  # a weight changed in place is not served from the cache
        assert torch.allclose(speed.upsample2x_conv3x3(x, conv), conv(F.interpolate(x, scale_factor=2)), atol=1e-5)


def test_winograd_conv_matches_conv2d_at_inference_only():
    """WinogradConv2d (NNPACK F(6x6, 3x3)): same state dict as the conv it replaces; at inference on
    the CPU in fp32 it differs from oneDNN's direct conv only by rounding (< 1e-4 relative); with
    grad on, under autocast or switched off it is the plain conv, bit for bit."""
    import torch

    from fewstep.nn import speed

    if not speed.winograd_available():
        pytest.skip("this PyTorch build has no NNPACK")
    torch.manual_seed(0)
    convs = torch.nn.Sequential(torch.nn.Conv2d(32, 40, 3, padding=1), torch.nn.Conv2d(40, 40, 3, stride=1, padding=2),
                                torch.nn.Conv2d(40, 36, 1), torch.nn.Conv2d(36, 33, 3, padding=1, bias=False))
    keys = list(convs.state_dict())
    ref = torch.nn.Sequential(*[type(m)(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                                        bias=m.bias is not None) for m in convs])
    ref.load_state_dict(convs.state_dict())
    assert speed.winograd_convs(convs) == 2  # only the 3x3 stride-1 pad-1 ones
    assert [type(m).__name__ for m in convs] == ["WinogradConv2d", "Conv2d", "Conv2d", "WinogradConv2d"]
    assert list(convs.state_dict()) == keys
    x = torch.randn(2, 32, 65, 67)  # odd sizes: NNPACK's 6x6 output tiles overhang the border
    with torch.no_grad():
        want, got = ref(x), convs(x)
        assert not torch.equal(got, want) and (got - want).abs().max() <= 1e-4 * want.abs().max()
        assert torch.equal(convs[0](x[1:]), convs[0](x)[1:])  # an image's result does not depend on its batch
        whole = convs[0](x[:1])
        for strip in (6, 12, 30):  # rows per call: horizontal strips give the same bytes as one call
            speed.WINOGRAD_STRIP = strip * x.shape[-1] * (32 + 40)
            try:
                assert torch.equal(convs[0](x[:1]), whole)
            finally:
                speed.WINOGRAD_STRIP = 2 ** 26
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(convs[0](x), ref[0](x))
        speed.WINOGRAD = False
        try:
            assert torch.equal(convs(x), want)
        finally:
            speed.WINOGRAD = True
    assert torch.equal(convs(x), ref(x))  # grad on: the plain conv (training is unchanged)


def test_winograd_keeps_the_direct_kernel_where_nnpack_is_slower():
    """Small maps (< 64 px) and thin convs (< 32 channels) keep oneDNN's conv, bit for bit; a
    nearest-x2 upsample whose conv is Winograd on the upsampled map skips the parity trick."""
    import torch

    from fewstep.nn import speed

    if not speed.winograd_available():
        pytest.skip("this PyTorch build has no NNPACK")
    torch.manual_seed(0)
    wide, thin = torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.Conv2d(8, 32, 3, padding=1)
    plain = {id(m): torch.nn.Conv2d(m.in_channels, m.out_channels, 3, padding=1) for m in (wide, thin)}
    for m in (wide, thin):
        plain[id(m)].load_state_dict(m.state_dict())
        speed.winograd_convs(m)
    with torch.no_grad():
        small, big = torch.randn(1, 32, 63, 70), torch.randn(1, 32, 64, 70)
        assert torch.equal(wide(small), plain[id(wide)](small))
        assert not torch.equal(wide(big), plain[id(wide)](big))
        assert torch.equal(thin(big[:, :8]), plain[id(thin)](big[:, :8]))
        assert speed.fast_upsample_ok(wide, torch.randn(1, 32, 31, 31))  # 62 px after x2: direct conv
        assert not speed.fast_upsample_ok(wide, torch.randn(1, 32, 32, 32))  # 64 px: Winograd instead


def test_chunked_mlp_equals_the_1x1_conv_mlp():
    """The Swin blocks' fc1 -> GELU -> fc2 as GEMMs over position chunks (cache-sized hidden map):
    equal to the module MLP to fp32 rounding, any chunk size, batch and bias; used by SwinBlock at
    CPU inference only."""
    import torch

    from fewstep.nn import speed

    torch.manual_seed(0)
    for bias in (True, False):
        fc1, fc2 = torch.nn.Conv2d(12, 48, 1, bias=bias), torch.nn.Conv2d(48, 12, 1, bias=bias)
        act = torch.nn.GELU()
        x = torch.randn(2, 12, 9, 11)
        with torch.no_grad():
            want = fc2(act(fc1(x)))
            for chunk in (1, 7, 64, 1000):
                got = speed.chunked_mlp(x, fc1, act, fc2, chunk=chunk)
                assert got.shape == want.shape and (got - want).abs().max() <= 1e-5 * want.abs().max()
    with torch.no_grad():
        assert speed.chunked_mlp_ok(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not speed.chunked_mlp_ok(x)
    assert not speed.chunked_mlp_ok(x)  # grad on (training)


def test_pipeline_speed_paths_keep_the_outputs():
    """ResShiftPipeline turns the UNet's and VQ's 3x3 convs into Winograd convs where NNPACK runs
    (VQ weights stay NCHW), else puts the VQ in NHWC; latent and image stay within 1e-4 of the
    plain modules, and the switches turn both off."""
    import copy

    import torch

    from fewstep.nn import speed
    from fewstep.resshift.chain import ResShiftChain
    from fewstep.resshift.pipeline import ResShiftPipeline

    unet, vq, bc = _tiny_pipeline_parts()
    plain_unet, plain_vq = copy.deepcopy(unet), copy.deepcopy(vq)

    def conv_weights(m):
        return [p for p in m.parameters() if p.dim() == 4 and p.shape[-1] > 1]

    def check(u, v):
        img, z = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 16, 16)
        with torch.no_grad():
            pairs = [(plain_vq.encode(img), v.encode(img)),
                     (plain_vq.decode(z, force_not_quantize=True), v.decode(z, force_not_quantize=True)),
                     (plain_unet(z, torch.tensor([1]), lq=z), u(z, torch.tensor([1]), lq=z))]
        for want, got in pairs:
            assert got.shape == want.shape and (got - want).abs().max() <= 1e-4 * want.abs().max()

    ResShiftPipeline(unet, vq, ResShiftChain(**bc.TINY_CHAIN))
    if speed.winograd_available():
        assert any(isinstance(m, speed.WinogradConv2d) for m in unet.modules())
        assert any(isinstance(m, speed.WinogradConv2d) for m in vq.modules())
        assert all(w.is_contiguous() for w in conv_weights(vq))
    else:
        assert all(w.is_contiguous(memory_format=torch.channels_last) for w in conv_weights(vq))
    check(unet, vq)
    speed.WINOGRAD = False
    try:
        u2, v2 = copy.deepcopy(plain_unet), copy.deepcopy(plain_vq)
        ResShiftPipeline(u2, v2, ResShiftChain(**bc.TINY_CHAIN))
        assert not any(isinstance(m, speed.WinogradConv2d) for m in list(u2.modules()) + list(v2.modules()))
        assert all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
                   for w in conv_weights(v2.encoder) + conv_weights(v2.decoder))
        assert all(w.is_contiguous() for w in conv_weights(u2))
        check(u2, v2)
        speed.CHANNELS_LAST_VQ = False
        v3 = copy.deepcopy(plain_vq)
        ResShiftPipeline(copy.deepcopy(plain_unet), v3, ResShiftChain(**bc.TINY_CHAIN))
        assert all(w.is_contiguous() for w in conv_weights(v3))
    finally:
        speed.WINOGRAD, speed.CHANNELS_LAST_VQ = True, True


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
    assert len(rows) == 2 and all(len(r.strip("|").split("|")) == 10 for r in rows)
