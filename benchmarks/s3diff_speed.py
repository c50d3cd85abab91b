"""S3Diff per-stage time and peak memory with the full-size SD-Turbo architecture (random weights).

    python benchmarks/s3diff_speed.py                         # CPU, 128->512 and 512->2048
    python benchmarks/s3diff_speed.py --sizes 128 --threads 2
    python benchmarks/s3diff_speed.py --device cuda --dtype bf16 --sizes 128 512

Stages: DE (degradation scores + modulation matrices), encode (upsample, pad, VAE encoder with
modulated LoRA, incl. tiling beyond 1088 px), UNet (guidance batched in one call; 96/32 latent tiles
beyond a 96^2 latent), decode (incl. exact-GroupNorm tiling beyond a 246 latent), colour fix (wavelet).
Prompt embeddings are cached (random here), so the text encoder is not timed. Peak memory: CUDA
max_memory_allocated per stage; on CPU the peak resident set size of the whole process during the
stage (absolute, model weights included), read from /proc/self/statm every 20 ms by a background
thread (ru_maxrss cannot say: building the model already set the process peak).
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import torch

from bench_common import SD21_UNET, SD_VAE  # noqa: E402  (the full-size SD-Turbo shapes, one definition)


def build(device: str, dtype: str):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from fewstep.s3diff.deresnet import DEResNet
    from fewstep.s3diff.model import S3DiffModel
    from fewstep.s3diff.pipeline import S3DiffPipeline

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD21_UNET)
    vae = AutoencoderKL(**SD_VAE)
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float32) ** 2
    model = S3DiffModel(unet, vae, torch.cumprod(1 - betas, 0))
    for layer in list(model.unet_lora.values()) + list(model.vae_lora.values()):
        torch.nn.init.normal_(layer.lora_B[layer.adapter].weight, std=0.01)  # non-zero: real LoRA cost
    pipe = S3DiffPipeline(model, DEResNet(), None, None, device=device, dtype=dtype)
    pipe.set_prompt_embeddings(torch.randn(1, 77, 1024), torch.randn(1, 77, 1024))
    return pipe


def rss_gib() -> float:
    """Resident set size of this process now (Linux /proc/self/statm: pages)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 30


class RssSampler:
    """Peak RSS while the `with` block runs, sampled by a daemon thread (torch kernels release the
    GIL, so the thread keeps sampling while the main thread computes)."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_gib())
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> "RssSampler":
        self.peak = rss_gib()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_gib())


class Meter:
    def __init__(self, device: torch.device):
        self.device = device
        self.rows: list[tuple[str, float, float]] = []

    def run(self, name, fn):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            t = time.perf_counter()
            out = fn()
            torch.cuda.synchronize()
            dt = time.perf_counter() - t
            mem = (torch.cuda.max_memory_allocated() - base) / 2 ** 30
        else:
            with RssSampler() as rss:
                t = time.perf_counter()
                out = fn()
                dt = time.perf_counter() - t
            mem = rss.peak
        self.rows.append((name, dt, mem))
        return out


@torch.no_grad()
def one_image(pipe, lr: torch.Tensor, meter: Meter) -> torch.Tensor:
    from fewstep.s3diff.colorfix import color_fix, to_8bit

    h, w = lr.shape[-2:]
    vm, um = meter.run("DE", lambda: pipe.modulation(pipe.degradation_scores(lr)))

    def encode():
        lr_up = pipe.upsample_lr(lr)
        x, _ = pipe.pad_to_64((lr_up * 2 - 1).clamp(-1, 1))
        mean, std = pipe.model.encode_posterior(x.to(pipe.dtype), vm, encoder=pipe._encoder_runner(x.shape[-2:]))
        g = torch.Generator().manual_seed(0)
        z = (mean.float() + std.float() * torch.randn(mean.shape, generator=g).to(mean.device)) \
            * pipe.model.scaling_factor
        return lr_up, z

    lr_up, z = meter.run("encode", encode)
    x0 = meter.run("UNet", lambda: pipe.model.x0(z, pipe._eps_image(z, um, None)))
    out = meter.run("decode", lambda: (pipe.model.decode(x0, decoder=pipe._decoder_runner(x0.shape[-2:]))
                                       .clamp(-1, 1)[:, :, :4 * h, :4 * w] * 0.5 + 0.5))
    return meter.run("colour fix", lambda: color_fix(to_8bit(out), to_8bit(lr_up.clamp(0, 1)), "wavelet"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 512], help="LR sizes (square); output is x4")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--warmup", action="store_true", help="run each size once untimed first (GPU)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t = time.perf_counter()
    pipe = build(args.device, args.dtype)
    print(f"# built full-size S3Diff (random weights) on {args.device} {args.dtype} in {time.perf_counter() - t:.1f}s;"
          f" torch threads {torch.get_num_threads()}; process RSS {rss_gib():.2f} GiB")
    if pipe.device.type == "cuda":
        print(f"# {torch.cuda.get_device_name()}")
    mem_unit = ("GiB (CUDA peak over stage start)" if pipe.device.type == "cuda"
                else "GiB (peak process RSS during the stage)")
    for s in args.sizes:
        lr = torch.rand(1, 3, s, s, generator=torch.Generator().manual_seed(s)).to(pipe.device)
        if args.warmup:
            one_image(pipe, lr, Meter(pipe.device))
        meter = Meter(pipe.device)
        one_image(pipe, lr, meter)
        total = sum(r[1] for r in meter.rows)
        print(f"\n## {s} -> {4 * s}   (memory: {mem_unit})")
        print("| stage | time (s) | peak mem |")
        print("|---|---|---|")
        for name, dt, mem in meter.rows:
            print(f"| {name} | {dt:.3f} | {mem:.2f} |")
        print(f"| total | {total:.3f} | |")


if __name__ == "__main__":
    main()
