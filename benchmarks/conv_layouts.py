"""3x3 convolutions of the ResShift VQ autoencoder: memory layouts and a fewer-FLOP algorithm.

    python benchmarks/conv_layouts.py                 # the 128 -> 512 shapes, 2 threads
    python benchmarks/conv_layouts.py --threads 1 --quick

For each conv shape the VQ runs at 128 -> 512 (channels x feature-map side), prints GFLOP/s of:
- `nchw`: PyTorch's default layout (oneDNN reorders to a blocked layout and back around each conv);
- `channels_last`: NHWC input and weights (oneDNN's NHWC direct kernels; what fewstep uses for the
  VQ, `fewstep.nn.speed.CHANNELS_LAST_VQ`);
- `mkldnn`: a tensor kept in oneDNN's blocked layout (`to_mkldnn`), no reorders;
- `winograd`: F(2x2, 3x3) written with torch ops (input/output transforms + 16 batched GEMMs over
  strips of tile rows): 2.25x fewer multiply-adds, max |error| printed. On CPU its transforms are
  memory-bound elementwise passes in eager PyTorch, which is why fewstep does not use it;
- `nnpack`: NNPACK's Winograd F(6x6, 3x3) kernel, bundled with PyTorch's CPU builds
  (`torch._nnpack_spatial_convolution`, what `fewstep.nn.speed.WinogradConv2d` runs), with its
  max |error| against a float64 convolution relative to the output's max |value| (oneDNN's
  direct conv: printed beside it).

The rate is the direct convolution's FLOPs (2 * 9 * Cin * Cout * H * W) over the time, so the
winograd column is an effective rate. Times are the best of `--repeats` after one warm-up.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
import torch.nn.functional as F

SHAPES = ((128, 512), (256, 512), (256, 256), (512, 256), (512, 128))  # (channels, side) at 128 -> 512

# F(2x2, 3x3) (Lavin & Gray 2016): Y = A^T [(G g G^T) * (B^T d B)] A
_G = torch.tensor([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=torch.float64)


def winograd_weight(w: torch.Tensor) -> torch.Tensor:
    """(Cout, Cin, 3, 3) -> (16, Cout, Cin): G g G^T per filter, in float64 then rounded once."""
    u = torch.einsum("ai,ocij,bj->aboc", _G, w.double(), _G)
    return u.reshape(16, w.shape[0], w.shape[1]).float().contiguous()


def _bt(d: torch.Tensor, dim: int) -> torch.Tensor:  # B^T along `dim` (size 4)
    d0, d1, d2, d3 = d.unbind(dim)
    return torch.stack([d0 - d2, d1 + d2, d2 - d1, d1 - d3], dim)


def _at(m: torch.Tensor, dim: int) -> torch.Tensor:  # A^T along `dim` (size 4 -> 2)
    m0, m1, m2, m3 = m.unbind(dim)
    return torch.stack([m0 + m1 + m2, m1 - m2 - m3], dim)


def winograd_conv3x3(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None, rows: int = 4) -> torch.Tensor:
    """conv2d(x, w, bias, padding=1) for even H, W, with u = winograd_weight(w); `rows` tile rows
    (2 output rows each) per GEMM so the transformed strips stay in cache."""
    n, c, h, w = x.shape
    xp = F.pad(x, (1, 1, 1, 1))
    th, tw, cout = h // 2, w // 2, u.shape[1]
    y = torch.empty(n, cout, h, w, dtype=x.dtype)
    s_n, s_c, s_h, s_w = xp.stride()
    for r0 in range(0, th, rows):
        r = min(rows, th - r0)
        d = xp[:, :, 2 * r0:].as_strided((4, 4, n, c, r, tw), (s_h, s_w, s_n, s_c, 2 * s_h, 2 * s_w))
        v = _bt(_bt(d, 0), 1).reshape(16, n, c, r * tw)
        m = torch.matmul(u[:, None], v).view(4, 4, n, cout, r, tw)
        o = _at(_at(m, 0), 1)  # (2, 2, n, cout, r, tw)
        y[:, :, 2 * r0:2 * (r0 + r)] = o.permute(2, 3, 4, 0, 5, 1).reshape(n, cout, 2 * r, w)
    if bias is not None:
        y += bias.view(1, -1, 1, 1)
    return y


def best_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch.utils import mkldnn as mkldnn_utils

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="smaller maps (side / 4): a smoke run")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# 3x3 conv, Cin = Cout, fp32, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| channels | side | GFLOP | nchw GF/s | channels_last GF/s | mkldnn GF/s | winograd GF/s (eff.) | "
          "winograd max abs err | nnpack GF/s (eff.) | rel. err nnpack / direct |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    nnpack = torch.backends.nnpack.is_available()  # also initialises NNPACK
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for c, side in SHAPES:
            side = side // 4 if args.quick else side
            x = torch.randn(1, c, side, side, generator=g)
            conv = torch.nn.Conv2d(c, c, 3, padding=1).eval()
            gflop = 2 * 9 * c * c * side * side / 1e9
            ref = conv(x)
            t_nchw = best_time(lambda: conv(x), args.repeats)
            conv_cl = torch.nn.Conv2d(c, c, 3, padding=1).eval().to(memory_format=torch.channels_last)
            conv_cl.load_state_dict(conv.state_dict())
            x_cl = x.contiguous(memory_format=torch.channels_last)
            t_cl = best_time(lambda: conv_cl(x_cl), args.repeats)
            with warnings.catch_warnings():  # torch.utils.mkldnn still builds on the deprecated jit.script_method
                warnings.simplefilter("ignore", DeprecationWarning)
                conv_mk = mkldnn_utils.to_mkldnn(torch.nn.Sequential(conv))
            x_mk = x.to_mkldnn()
            t_mk = best_time(lambda: conv_mk(x_mk), args.repeats)
            u = winograd_weight(conv.weight)
            t_w = best_time(lambda: winograd_conv3x3(x, u, conv.bias), args.repeats)
            err = float((winograd_conv3x3(x, u, conv.bias) - ref).abs().max())
            nn_cells = "- | -"
            if nnpack:
                w, b = conv.weight.contiguous(), conv.bias
                t_nn = best_time(lambda: torch._nnpack_spatial_convolution(x, w, b, [1, 1]), args.repeats)
                exact = F.conv2d(x.double(), w.double(), b.double(), padding=1)
                scale = float(exact.abs().max())
                e_nn = float((torch._nnpack_spatial_convolution(x, w, b, [1, 1]).double() - exact).abs().max()) / scale
                e_dir = float((ref.double() - exact).abs().max()) / scale
                nn_cells = f"{gflop / t_nn:.0f} | {e_nn:.1e} / {e_dir:.1e}"
            print(f"| {c} | {side} | {gflop:.1f} | {gflop / t_nchw:.0f} | {gflop / t_cl:.0f} | {gflop / t_mk:.0f} | "
                  f"{gflop / t_w:.0f} | {err:.1e} | {nn_cells} |", flush=True)


if __name__ == "__main__":
    main()
