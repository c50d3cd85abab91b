"""Latency and peak memory of ResShift inference with the full-size realsr-v3 architecture.

Random weights (the speed does not depend on them); one image per run, default fewstep settings
(4 steps, Gaussian tiling with tile 256 LR px). Each case runs in a fresh subprocess so the peak
resident memory (CPU) is that case's alone; on CUDA the peak is torch's max allocated memory.

    python benchmarks/resshift_speed.py                      # CPU, 64->256 and 256->1024
    python benchmarks/resshift_speed.py --device cuda --dtype bf16 --sizes 64 256 512
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def run_case(size: int, device: str, dtype: str, repeats: int, tile: int) -> dict:
    import torch

    from fewstep.resshift.models import build_upscaler
    from fewstep.resshift.presets import CHAIN_JOURNAL, UNET_REALSR, VQ_F4
    from fewstep.resshift.unet import SwinUNet
    from fewstep.resshift.vq import VQModel
    from fewstep.tiling import plan_tiles

    torch.manual_seed(0)
    up = build_upscaler(SwinUNet(**UNET_REALSR), VQModel(**VQ_F4), CHAIN_JOURNAL, scale=4, name="realsr-v3(random)",
                        device=device, dtype=dtype, tile=tile, overlap=32)
    lr = torch.rand(1, 3, size, size)
    times = []
    if device.startswith("cuda"):
        up.restore(lr, seed=0)  # warm-up (kernels, cudnn autotune)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = up.restore(lr, seed=0)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"in": size, "out": out.shape[-1], "device": device, "dtype": dtype, "threads": torch.get_num_threads(),
            "seconds": min(times), "peak_mib": peak / 2 ** 20, "tiles": len(plan_tiles(size, size, tile, 32).tiles())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256], help="LR sizes (square)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--case", type=int, help=argparse.SUPPRESS)  # internal: run one size, print JSON
    args = ap.parse_args()
    if args.case is not None:
        print(json.dumps(run_case(args.case, args.device, args.dtype, args.repeats, args.tile)))
        return
    rows = []
    for size in args.sizes:
        cmd = [sys.executable, __file__, "--case", str(size), "--device", args.device, "--dtype", args.dtype,
               "--repeats", str(args.repeats), "--tile", str(args.tile)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            print(f"{size}: failed: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode}")
            continue
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    print("| LR -> SR | device | dtype | threads | tiles | s / image | peak memory (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['in']} -> {r['out']} | {r['device']} | {r['dtype']} | {r['threads']} | {r['tiles']} | "
              f"{r['seconds']:.2f} | {r['peak_mib']:.0f} |")


if __name__ == "__main__":
    main()
