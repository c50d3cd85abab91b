"""S3Diff per-stage time and peak memory with the full-size SD-Turbo architecture (random weights).

    python benchmarks/s3diff_speed.py                         # CPU, 128->512 and 512->2048
    python benchmarks/s3diff_speed.py --sizes 128 --threads 2
    python benchmarks/s3diff_speed.py --device cuda --dtype bf16 --sizes 128 512

Stages: DE (degradation scores + modulation matrices), encode (upsample, pad, VAE encoder with
modulated LoRA, incl. tiling beyond 1088 px), UNet (guidance batched in one call; 96/32 latent tiles
beyond a 96^2 latent), decode (incl. exact-GroupNorm tiling beyond a 246 latent), colour fix (wavelet).
Prompt embeddings are cached (random here), so the text encoder is not timed. Peak memory: CUDA
max_memory_allocated per stage; on CPU the growth of the process's peak RSS (ru_maxrss) per stage.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

SD21_UNET = dict(sample_size=96, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20),
                 cross_attention_dim=1024, use_linear_projection=True,
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                   "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
              block_out_channels=(128, 256, 512, 512), sample_size=768,
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)


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


class Meter:
    def __init__(self, device: torch.device):
        self.device = device
        self.rows: list[tuple[str, float, float]] = []

    def run(self, name, fn):
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        out = fn()
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        if cuda:
            mem = (torch.cuda.max_memory_allocated() - base) / 2 ** 30
        else:
            mem = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 2 ** 20  # KiB -> GiB
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
          f" torch threads {torch.get_num_threads()}")
    if pipe.device.type == "cuda":
        print(f"# {torch.cuda.get_device_name()}")
    mem_unit = "GiB (CUDA peak over stage start)" if pipe.device.type == "cuda" else "GiB (growth of peak RSS)"
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
