"""Inference speed switches that leave the numbers alone (or within stated tolerances).

* `INPLACE` / `inplace_ok`: in-place elementwise ops in the ResShift UNet and VQ at inference
  (bit-identical; see tests/test_benchmarks.py).
* `CudaGraphed` / `cuda_graph_forward`: replay a module's forward from a CUDA graph captured per
  input signature (shapes, dtypes, autocast state). Tiling gives every tile the same shape (edge
  tiles are shifted inside the image, see `fewstep.tiling.tile_starts`), so one graph per tile size
  and batch serves a whole image. Falls back to the plain call off CUDA or with grad enabled.
* `channels_last`: NHWC weights (conv kernels pick their NHWC paths); exact on CPU in our tests
  (<= 1e-5), the layout the GPU tensor cores prefer.
* `compile_module`: `torch.compile` in place (keeps state-dict names), with inductor's on-disk
  FX-graph cache so the second process does not pay the compile again.

Nothing here is imported by `import fewstep`; torch is imported by the callers anyway.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten


# In-place elementwise ops (SiLU, scale-shift, residual adds) in inference: bit-identical results,
# fewer large allocations (on CPU every fresh multi-MB tensor is an mmap + page faults). Only when
# autograd is off, since in-place ops would break backward. Switch: fewstep.nn.speed.INPLACE = False
# (or FEWSTEP_INPLACE=0).
INPLACE = os.environ.get("FEWSTEP_INPLACE", "1") != "0"


def inplace_ok() -> bool:
    return INPLACE and not torch.is_grad_enabled()


def _signature(flat: list, spec) -> tuple:
    parts: list[Any] = [str(spec)]
    for x in flat:
        if torch.is_tensor(x):
            parts.append(("T", tuple(x.shape), x.dtype, str(x.device), x.is_contiguous()))
        else:
            parts.append(("V", repr(x)))
    if torch.is_autocast_enabled("cuda"):
        parts.append(("autocast", torch.get_autocast_dtype("cuda")))
    return tuple(parts)


class CudaGraphed:
    """`fn` replayed from CUDA graphs, one per call signature.

    On the first call with a new signature the inputs are copied into static buffers, `fn` runs
    `warmup` times on a side stream (lazy initialisation, caches such as the Swin masks, cuDNN
    autotuning), and then once under `torch.cuda.graph`. Later calls copy their tensors into the
    static inputs, replay, and return clones of the static outputs (the next replay overwrites
    them). Tensors the function reads from elsewhere (parameters, cached buffers) are read at
    their captured addresses: modify them in place only (e.g. merged LoRA weights via copy_).
    """

    def __init__(self, fn: Callable, warmup: int = 2, max_graphs: int = 16):
        self.fn, self.warmup, self.max_graphs = fn, int(warmup), int(max_graphs)
        self.graphs: dict[tuple, tuple] = {}

    def __call__(self, *args, **kwargs):
        flat, spec = tree_flatten((args, kwargs))
        tensors = [x for x in flat if torch.is_tensor(x)]
        if (torch.is_grad_enabled() or not tensors or any(t.device.type != "cuda" for t in tensors)
                or torch.cuda.is_current_stream_capturing()):
            return self.fn(*args, **kwargs)
        key = _signature(flat, spec)
        entry = self.graphs.get(key)
        if entry is None:
            if len(self.graphs) >= self.max_graphs:
                return self.fn(*args, **kwargs)
            entry = self.graphs[key] = self._capture(flat, spec)
        static_in, graph, static_out = entry
        for s, x in zip(static_in, tensors):
            s.copy_(x)
        graph.replay()
        return torch.utils._pytree.tree_map(lambda t: t.clone() if torch.is_tensor(t) else t, static_out)

    def _capture(self, flat: list, spec) -> tuple:
        static_in = [x.clone() if torch.is_tensor(x) else None for x in flat]
        call_flat = [s if s is not None else x for s, x in zip(static_in, flat)]
        args, kwargs = tree_unflatten(call_flat, spec)
        # Under autocast, the casts of the weights must be recorded in the graph, not taken from
        # autocast's cache: cached copies are freed when the autocast region ends, and a replay
        # would read freed memory (PyTorch's rule: graphs need autocast(cache_enabled=False)).
        no_cache = (torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False)
                    if torch.is_autocast_enabled("cuda") else contextlib.nullcontext())
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with no_cache:
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    self.fn(*args, **kwargs)
            torch.cuda.current_stream().wait_stream(side)
            torch.clear_autocast_cache()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self.fn(*args, **kwargs)
        return [s for s in static_in if s is not None], graph, out


def cuda_graph_forward(module: nn.Module, warmup: int = 2) -> CudaGraphed:
    """Make `module(...)` replay CUDA graphs (instance attribute shadowing `forward`); undo with
    `restore_forward(module)`."""
    graphed = CudaGraphed(module.forward, warmup=warmup)
    module.forward = graphed  # type: ignore[method-assign]
    return graphed


def restore_forward(module: nn.Module) -> None:
    """Undo `cuda_graph_forward` (drops the graphs and their memory)."""
    if "forward" in module.__dict__:
        del module.forward


# NHWC conv weights for the VQ *decoder* of every ResShift pipeline (ResShiftPipeline.__init__):
# oneDNN's NHWC direct convolutions run at ~195 GFLOP/s on this 2-core AVX-512 CPU where the NCHW
# path (a reorder to blocked layout and back around every conv) gets ~145 on 512x512 feature maps
# (benchmarks/conv_layouts.py); results agree to ~1e-6. Not the encoder: its output feeds the
# chain and then the decoder's vector quantiser, where a 1e-6 change can flip a code (measured at
# 128 -> 512: max |diff| 5.8e-2 with an NHWC encoder); the decoder starts from the chosen codes.
# Switch: FEWSTEP_CHANNELS_LAST=0.
CHANNELS_LAST_VQ = os.environ.get("FEWSTEP_CHANNELS_LAST", "1") != "0"


def channels_last(module: nn.Module) -> nn.Module:
    """NHWC weights for every 4-D parameter (conv kernels); other tensors are unaffected."""
    return module.to(memory_format=torch.channels_last)


def compile_module(module: nn.Module, *, mode: str | None = None, dynamic: bool | None = False,
                   cache_dir: str | None = None) -> nn.Module:
    """`module.compile()` in place (state-dict names unchanged). Inductor keeps compiled graphs in
    its FX-graph cache (`TORCHINDUCTOR_CACHE_DIR`, default under /tmp); `cache_dir` moves it so a
    cache survives reboots. Undo with `uncompile_module`."""
    if cache_dir is not None:
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir))
    module.compile(mode=mode, dynamic=dynamic)
    return module


def uncompile_module(module: nn.Module) -> None:
    module._compiled_call_impl = None  # what nn.Module.compile sets


# --------------------------------------------------------------------------------------------
# nearest x2 upsampling followed by a 3x3 conv, with 2.25x fewer FLOPs
# --------------------------------------------------------------------------------------------
# Each output pixel parity (a, b) of conv3x3(nearest_x2(x)) sees only 2x2 distinct input pixels,
# so the four parities are one 2x2 conv (C -> 4C) on the 1-padded low-resolution input, with
# kernels that sum the 3x3 taps falling on the same input pixel. Same result up to the rounding of
# those sums (~1e-7 relative); off by default (switch: FAST_UPSAMPLE, or FEWSTEP_FAST_UPSAMPLE=1)
# until measured faster on a quiet machine.
FAST_UPSAMPLE = os.environ.get("FEWSTEP_FAST_UPSAMPLE", "0") == "1"
_TAP_GROUPS = (((0,), (1, 2)), ((0, 1), (2,)))  # parity -> (taps on input offset -1/0, on 0/+1)


def _pair_sums(w: torch.Tensor, dim: int, parity: int) -> torch.Tensor:
    """Along `dim` (size 3): parity 0 -> [w0, w1 + w2], parity 1 -> [w0 + w1, w2]."""
    t0, t1, t2 = w.unbind(dim)
    pair = (t0, t1 + t2) if parity == 0 else (t0 + t1, t2)
    return torch.stack(pair, dim)


def _phase_weight(conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(4*Cout, Cin, 2, 2) kernels, parity-major, summed in float64; cached on the conv until its
    weight or bias changes (in-place updates bump the tensors' version; `.data` edits do not, so
    after those call `clear_upsample_cache`)."""
    w, bias = conv.weight, conv.bias
    key = (w.data_ptr(), w._version, w.dtype, w.device,
           None if bias is None else (bias.data_ptr(), bias._version))
    cached = conv.__dict__.get("_fewstep_phase")
    if cached is not None and cached[0] == key:
        return cached[1], cached[2]
    w64 = w.detach().double()
    blocks = [_pair_sums(_pair_sums(w64, 2, a), 3, b) for a in range(2) for b in range(2)]
    weight = torch.cat(blocks).to(w.dtype)
    b4 = bias.detach().repeat(4) if bias is not None else None
    conv.__dict__["_fewstep_phase"] = (key, weight, b4)
    return weight, b4


def clear_upsample_cache(module: nn.Module) -> None:
    for m in module.modules():
        m.__dict__.pop("_fewstep_phase", None)


def upsample2x_conv3x3(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """conv(F.interpolate(x, scale_factor=2, mode="nearest")) for a 3x3, stride-1, pad-1 conv."""
    weight, bias = _phase_weight(conv)
    b, _, h, w = x.shape
    cout = conv.out_channels
    o = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1)), weight.to(x.dtype),
                                   None if bias is None else bias.to(x.dtype))  # (B, 4C, h+1, w+1)
    y = x.new_empty(b, cout, 2 * h, 2 * w)
    for a in range(2):
        for c in range(2):
            p = a * 2 + c
            y[:, :, a::2, c::2] = o[:, p * cout:(p + 1) * cout, a:a + h, c:c + w]
    return y


def fast_upsample_ok(conv: nn.Conv2d) -> bool:
    return (FAST_UPSAMPLE and not torch.is_grad_enabled() and conv.kernel_size == (3, 3)
            and conv.stride == (1, 1) and conv.padding == (1, 1) and conv.groups == 1 and conv.dilation == (1, 1))
