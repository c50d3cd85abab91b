"""Helpers shared by the benchmark scripts (imported as a sibling module: the scripts run as
`python benchmarks/NAME.py`, so this folder is on sys.path).

Only architecture presets and measuring tools live here; nothing in the library imports it.
"""

from __future__ import annotations

import os
import resource
import time

# Tiny architectures for the smoke modes: same code paths (Swin windows with shift, VQ mid
# attention, SD cross-attention, LoRA) at a size that runs in well under a second on a CPU.
TINY_UNET = dict(image_size=16, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=[1, 1],
                 attention_resolutions=[16, 8], dropout=0, channel_mult=[1, 2], num_head_channels=16,
                 swin_depth=2, swin_embed_dim=32, window_size=4, mlp_ratio=2, cond_lq=True, lq_size=16)
TINY_VQ = dict(embed_dim=3, n_embed=64, ddconfig=dict(double_z=False, z_channels=3, resolution=64, in_channels=3,
                                                       out_ch=3, ch=32, ch_mult=[1, 1, 2], num_res_blocks=1,
                                                       attn_resolutions=[], dropout=0.0))
TINY_CHAIN = dict(steps=2, min_noise_level=0.2, kappa=2.0, etas_end=0.99, power=0.3)

# S3Diff = SD 2.1 UNet + SD VAE (the SD-Turbo shapes); the tiny ones keep every block type.
SD21_UNET = dict(sample_size=96, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20),
                 cross_attention_dim=1024, use_linear_projection=True,
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                   "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
              block_out_channels=(128, 256, 512, 512), sample_size=768,
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
TINY_SD_UNET = dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                    block_out_channels=(32, 64), attention_head_dim=(2, 4), cross_attention_dim=32,
                    norm_num_groups=16, use_linear_projection=True,
                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
TINY_SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
                   block_out_channels=(16, 16, 32, 32), sample_size=64,
                   down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)


def sgemm_gflops(n: int = 2048, rounds: int = 3, reps: int = 4, device: str = "cpu") -> float:
    """Best fp32 matmul throughput (GFLOP/s) of an n x n x n product at the current thread count:
    the reference 'peak' every stage's throughput is compared with."""
    import torch

    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    c = torch.empty(n, n, device=device)
    torch.mm(a, b, out=c)  # first call: allocation / kernel selection
    best = 0.0
    for _ in range(rounds):
        if device != "cpu":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=c)
        if device != "cpu":
            torch.cuda.synchronize()
        best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9)
    return best


def peak_rss_gib() -> float:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def rss_gib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 30


def flop_counter():
    """`torch.utils.flop_counter.FlopCounterMode` that also counts CPU attention.

    torch's table has formulas for the CUDA SDPA kernels only; on the CPU, SDPA runs
    `aten._scaled_dot_product_flash_attention_for_cpu`, which the stock counter skips, so every
    attention (the VQ mid-block's 16384-token attention is ~550 GFLOP at 128 -> 512) would be
    timed but not counted. Counted as two matmuls (Q K^T and P V), like torch's CUDA formula."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    return FlopCounterMode(display=False, custom_mapping={
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa})
