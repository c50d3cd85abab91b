"""One-command GPU benchmark of ResShift-v3 and S3Diff (full-size architectures, random weights).

    bash benchmarks/gpu.sh                       # = python benchmarks/gpu_bench.py --out reports/speed_gpu.md
    python benchmarks/gpu_bench.py --budget 300 --models resshift
    python benchmarks/gpu_bench.py --cpu-smoke   # tiny models on the CPU in seconds (run by the tests)

For each model, LR size (128 -> 512, 512 -> 2048), batch (1, 8), dtype (fp32, bf16, fp16) and
mode it prints ms/image, images/s and peak GPU memory:
  eager     the library as a user runs it (ResShift: autocast with fp32 chain arithmetic;
            S3Diff: weights cast to the dtype, LoRA merged in place per image, cached prompt
            embeddings, tiles batched);
  graphs    the same, with the networks (UNet, VAE/VQ encoder and decoder) replayed from CUDA
            graphs captured per tile shape (`fewstep.nn.speed.CudaGraphed`);
  compile   the networks through `torch.compile` (inductor, static shapes);
  eager-cl  eager with channels_last weights.
plus the bf16/fp16 vs fp32 output difference (same input, seed and weights). Cases run in order
of importance until the time budget (default 400 s, building included; a case whose estimate,
scaled from a measured one, does not fit is skipped) is spent; the rest are
listed as skipped. Nothing is installed: it needs torch with CUDA, and diffusers for S3Diff.
Random weights give the real cost (no layer is skipped for zero weights: LoRA B is non-zero).
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from bench_common import (SD21_UNET, SD_VAE, TINY_CHAIN, TINY_SD_UNET, TINY_SD_VAE, TINY_UNET,  # noqa: E402
                          TINY_VQ)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Case:
    model: str
    size: int
    batch: int
    dtype: str
    mode: str
    result: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------
# models
# ------------------------------------------------------------------------------------------------
class ResShiftBench:
    name = "ResShift-v3"

    def __init__(self, device: str, tiny: bool):
        from fewstep.resshift.models import build_upscaler
        from fewstep.resshift.presets import CHAIN_JOURNAL, UNET_REALSR, VQ_F4
        from fewstep.resshift.unet import SwinUNet
        from fewstep.resshift.vq import VQModel

        torch.manual_seed(0)
        ucfg, vcfg, ccfg = (TINY_UNET, TINY_VQ, TINY_CHAIN) if tiny else (UNET_REALSR, VQ_F4, CHAIN_JOURNAL)
        with torch.device(device):
            unet, vq = SwinUNet(**ucfg), VQModel(**vcfg)
        self.tile = 16 if tiny else 256
        self.up = build_upscaler(unet, vq, ccfg, scale=4, name="realsr-v3(random)", device=device,
                                 tile=self.tile, overlap=self.tile // 8)

    def modules(self, dtype: str):
        p = self.up.pipe
        return [p.unet, p.vq.encoder, p.vq.decoder]

    def prepare(self, dtype: str, batch: int, size: int):
        self.up.dtype = dtype
        # batched tiles (a whole 512 -> 2048 image is 9 tiles); the 4096^2 memory case runs the
        # default one tile at a time
        self.up.tile_batch = 1 if size >= 1024 else max(1, 16 // batch)

    def run(self, lr: torch.Tensor, dtype: str) -> torch.Tensor:
        return self.up.restore(lr, seed=0)


class S3DiffBench:
    name = "S3Diff"

    def __init__(self, device: str, tiny: bool):
        from diffusers import AutoencoderKL, UNet2DConditionModel

        from fewstep.s3diff.deresnet import DEResNet
        from fewstep.s3diff.model import S3DiffModel

        torch.manual_seed(0)
        self.device, self.tiny = device, tiny
        with torch.device(device):
            unet = UNet2DConditionModel(**(TINY_SD_UNET if tiny else SD21_UNET))
            vae = AutoencoderKL(**(TINY_SD_VAE if tiny else SD_VAE))
            betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float32) ** 2
            self.model = S3DiffModel(unet, vae, torch.cumprod(1 - betas, 0).cpu())
            for layer in list(self.model.unet_lora.values()) + list(self.model.vae_lora.values()):
                torch.nn.init.normal_(layer.lora_B[layer.adapter].weight, std=0.01)  # real LoRA cost
            self.de_net = DEResNet()
        cross = (TINY_SD_UNET if tiny else SD21_UNET)["cross_attention_dim"]
        g = torch.Generator().manual_seed(1)
        self.emb = (torch.randn(1, 77, cross, generator=g), torch.randn(1, 77, cross, generator=g))
        self.pipes: dict[str, object] = {}

    def pipe(self, dtype: str):
        from fewstep.s3diff.pipeline import S3DiffPipeline

        if dtype not in self.pipes:
            self.model.unmerge_lora_()
            kept, self.model._lora_base = self.model._lora_base, None  # do not copy the fp32 W0 along
            model = self.model if dtype == "fp32" else copy.deepcopy(self.model)  # the pipeline casts in place
            self.model._lora_base = kept
            kw = dict(latent_tile=8, latent_overlap=4) if self.tiny else {}
            p = S3DiffPipeline(model, self.de_net, None, None, device=self.device, dtype=dtype, merge_lora="inplace",
                               tile_batch=16, **kw)
            p.set_prompt_embeddings(*self.emb)  # cached prompt embeddings (the text encoder is not timed)
            self.pipes[dtype] = p
        return self.pipes[dtype]

    def modules(self, dtype: str):
        m = self.pipe(dtype).model
        return [m.unet, m.vae.encoder, m.vae.decoder]

    def prepare(self, dtype: str, batch: int, size: int):
        self.pipe(dtype).tile_batch = 4 if size >= 1024 else 16  # 4 = the library default

    def run(self, lr: torch.Tensor, dtype: str) -> torch.Tensor:
        return self.pipe(dtype)(lr, generator=0, color_fix="wavelet")


# ------------------------------------------------------------------------------------------------
# modes
# ------------------------------------------------------------------------------------------------
def apply_mode(bench, dtype: str, mode: str):
    """Switch the networks into `mode`; returns an undo function."""
    from fewstep.nn.speed import (channels_last, compile_module, cuda_graph_forward, restore_forward,
                                  uncompile_module)

    mods = bench.modules(dtype)
    if mode == "eager":
        return lambda: None
    if mode == "graphs":
        for m in mods:
            cuda_graph_forward(m)
        return lambda: [restore_forward(m) for m in mods]
    if mode == "compile":
        for m in mods:
            compile_module(m)
        return lambda: [uncompile_module(m) for m in mods]
    if mode == "eager-cl":
        for m in mods:
            channels_last(m)
        return lambda: [m.to(memory_format=torch.contiguous_format) for m in mods]
    raise ValueError(mode)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def make_lr(size: int, batch: int, device: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(size)
    lr = torch.nn.functional.interpolate(torch.rand(batch, 3, size // 4, size // 4, generator=g), size=(size, size),
                                         mode="bicubic")
    return (lr + 0.05 * torch.randn(lr.shape, generator=g)).clamp(0, 1).to(device)


@torch.no_grad()
def run_case(bench, case: Case, device: str, target_s: float, outputs: dict) -> None:
    bench.prepare(case.dtype, case.batch, case.size)
    lr = make_lr(case.size, case.batch, device)
    undo = apply_mode(bench, case.dtype, case.mode)
    try:
        sync(device)
        t = time.perf_counter()
        out = bench.run(lr, case.dtype)  # first call: compile / capture / autotune
        sync(device)
        first = time.perf_counter() - t
        if target_s <= 0:  # smoke mode: the one call is the measurement
            reps, times = 0, [first]
        else:
            if case.mode in ("graphs", "compile"):
                bench.run(lr, case.dtype)  # second call: replays (graphs) / any recompile settles
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            times = []
            reps = 1 if first > target_s else max(2, min(10, int(target_s / max(first, 1e-3))))
        for _ in range(reps):
            sync(device)
            t = time.perf_counter()
            out = bench.run(lr, case.dtype)
            sync(device)
            times.append(time.perf_counter() - t)
        sec = statistics.median(times)
        case.result = {"ms_per_image": 1e3 * sec / case.batch, "images_per_s": case.batch / sec, "first_s": first,
                       "reps": reps}
        if device.startswith("cuda"):
            case.result["peak_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
        if case.batch == 1 and case.mode == "eager":
            outputs[(case.model, case.size, case.dtype)] = out.float().cpu()
    finally:
        undo()


def plan_cases(models: list[str], sizes: list[int], batches: list[int], dtypes: list[str],
               modes: list[str], smoke: bool) -> list[Case]:
    """Every combination, most important first (the budget cuts from the end)."""
    small, big = sizes[0], sizes[-1]

    def prio(c: Case) -> tuple:
        first = c.size == small and c.batch == 1
        if first and (c.mode == "eager" or (c.dtype == "bf16" and c.mode == "graphs")):
            p = 0
        elif c.dtype == "bf16" and c.mode in ("eager", "graphs") and (c.batch == 1 or c.size == small):
            p = 1
        elif first and c.dtype == "bf16" and c.mode == "compile":
            p = 2
        elif c.dtype == "bf16" and c.mode in ("eager", "graphs"):
            p = 3
        elif c.mode == "eager" and (c.size == small or c.batch == 1):
            p = 4
        elif c.dtype == "bf16":
            p = 5
        elif c.mode == "eager":
            p = 6
        elif c.mode == "graphs":
            p = 7
        else:
            p = 9
        return (p, c.size, c.batch, models.index(c.model))

    cases = [Case(m, s, b, d, mo) for m in models for s in sizes for b in batches for d in dtypes for mo in modes]
    cases = sorted(cases, key=prio)
    if not smoke and "bf16" in dtypes:  # the 4096^2-output memory target (issue 14: within 12 GB)
        cases += [Case(m, 1024, 1, "bf16", "eager") for m in models if 1024 not in sizes]
    return cases


def diff_rows(outputs: dict) -> list[str]:
    rows = []
    for (model, size, dtype), out in sorted(outputs.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        ref = outputs.get((model, size, "fp32"))
        if dtype == "fp32" or ref is None:
            continue
        d = (out - ref).abs()
        mse = float((d ** 2).mean())
        psnr = 10 * math.log10(1 / mse) if mse > 0 else float("inf")
        rows.append(f"| {model} | {size} → {4 * size} | {dtype} vs fp32 | {d.max().item():.3e} | "
                    f"{d.mean().item():.3e} | {psnr:.1f} |")
    return rows


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["resshift", "s3diff"], choices=["resshift", "s3diff"])
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="LR sizes (default 128 512)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--dtypes", nargs="+", default=None, choices=list(DTYPES))
    ap.add_argument("--modes", nargs="+", default=None, choices=["eager", "graphs", "compile", "eager-cl"])
    ap.add_argument("--budget", type=float, default=400.0, help="seconds for the whole run (building included)")
    ap.add_argument("--target", type=float, default=1.5, help="seconds of timed repeats per case")
    ap.add_argument("--out", help="write the markdown report here")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny models, tiny sizes, CPU, fp32 eager (+bf16 diff)")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    smoke = args.cpu_smoke
    if smoke:
        device = "cpu"
        torch.set_num_threads(1)
        sizes, dtypes = args.sizes or [16, 24], args.dtypes or ["fp32", "bf16"]
        modes, batches = args.modes or ["eager", "graphs"], [1, 2]
        target = 0.0
    else:
        if not torch.cuda.is_available():
            raise SystemExit("gpu_bench: no CUDA device visible to torch (use --cpu-smoke for the CPU check)")
        device = "cuda"
        torch.backends.cudnn.benchmark = True
        sizes, dtypes = args.sizes or [128, 512], args.dtypes or list(DTYPES)
        modes, batches, target = args.modes or ["eager", "graphs", "compile", "eager-cl"], args.batches, args.target

    benches, notes = {}, []
    for m in args.models:
        t = time.perf_counter()
        try:
            benches[m] = (ResShiftBench if m == "resshift" else S3DiffBench)(device, smoke)
        except ImportError as e:
            notes.append(f"{m}: not run ({e})")
            continue
        notes.append(f"{m}: built in {time.perf_counter() - t:.1f} s")
    cases = plan_cases(list(benches), sizes, batches, dtypes, modes, smoke)
    if smoke:  # fp32 eager for every size/batch, the graph plumbing once, batch-1 bf16 eager for the diff
        cases = [c for c in cases if (c.dtype == "fp32" and c.mode == "eager") or (c.batch == 1 and (
            (c.mode == "eager") or (c.size == sizes[0] and c.dtype == "fp32")))]
    outputs: dict = {}
    skipped, failed = [], []
    seen: dict[tuple, tuple[int, int, float]] = {}  # (model, dtype, mode) -> (size, batch, s/image)

    def estimate(c: Case) -> float:
        """Seconds this case will take (first call + one repeat), scaled from a measured one by pixels."""
        for key in ((c.model, c.dtype, c.mode), (c.model, c.dtype, "eager"), (c.model, "bf16", "eager")):
            if key in seen:
                size, _, sec = seen[key]
                return 2 * sec * (c.size / size) ** 2 * c.batch * (1.5 if c.mode in ("graphs", "compile") else 1)
        return 0.0

    for c in cases:
        left = args.budget - (time.perf_counter() - t_start)
        if left <= 0 or (c.mode == "compile" and left < 120) or estimate(c) > left:
            skipped.append(c)
            continue
        try:
            run_case(benches[c.model], c, device, target, outputs)
        except Exception as e:  # one failing case (e.g. capture not supported) must not end the run
            failed.append((c, f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}"))
            if device == "cuda":
                torch.cuda.empty_cache()
            if smoke:
                raise
        if c.result:
            r = c.result
            seen[(c.model, c.dtype, c.mode)] = (c.size, c.batch, r["ms_per_image"] / 1e3)
            print(f"{benches[c.model].name:12s} {c.size:4d}->{4 * c.size:<5d} b{c.batch} {c.dtype} {c.mode:8s} "
                  f"{r['ms_per_image']:10.2f} ms/img  {r.get('peak_gib', float('nan')):6.2f} GiB  "
                  f"(first {r['first_s']:.2f} s)", flush=True)

    lines = [f"# GPU benchmark: ResShift-v3 and S3Diff (full-size architectures, random weights)" if not smoke
             else "# CPU smoke run of benchmarks/gpu_bench.py (tiny models; numbers mean nothing)", ""]
    dev_name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    lines += [f"Device: {dev_name}; torch {torch.__version__}; total run {time.perf_counter() - t_start:.0f} s "
              f"(budget {args.budget:.0f} s). ms/image = median of the timed repeats / batch; peak = "
              "torch.cuda.max_memory_allocated over the timed repeats (weights included)." +
              (f" TF32: cuDNN convolutions {torch.backends.cudnn.allow_tf32}, matmuls "
               f"{torch.backends.cuda.matmul.allow_tf32} (as set; PyTorch's defaults are True and False)."
               if device == "cuda" else ""), ""]
    lines += [f"- {n}" for n in notes] + [""]
    lines += ["| model | LR → SR | batch | dtype | mode | ms/image | images/s | peak GPU GiB | first call s |",
              "|---|---|---|---|---|---:|---:|---:|---:|"]
    done = sorted([c for c in cases if c.result],
                  key=lambda c: (c.model, c.size, c.batch, list(DTYPES).index(c.dtype), c.mode))
    for c in done:
        r = c.result
        peak = f"{r['peak_gib']:.2f}" if "peak_gib" in r else "-"
        lines.append(f"| {benches[c.model].name} | {c.size} → {4 * c.size} | {c.batch} | {c.dtype} | {c.mode} | "
                     f"{r['ms_per_image']:.1f} | {r['images_per_s']:.2f} | {peak} | {r['first_s']:.1f} |")
    lines += ["", "Output difference against fp32 eager (batch 1, same input, seed and weights; images in [0, 1]):", "",
              "| model | LR → SR | dtype | max abs diff | mean abs diff | PSNR dB |", "|---|---|---|---:|---:|---:|"]
    lines += diff_rows({(benches[m].name, s, d): o for (m, s, d), o in outputs.items()})
    if failed:
        lines += ["", "Failed cases:", ""] + [f"- {c.model} {c.size} b{c.batch} {c.dtype} {c.mode}: {msg}"
                                              for c, msg in failed]
    if skipped:
        lines += ["", f"Skipped for the time budget ({len(skipped)}): " +
                  ", ".join(f"{c.model} {c.size} b{c.batch} {c.dtype} {c.mode}" for c in skipped)]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return text


if __name__ == "__main__":
    main()
