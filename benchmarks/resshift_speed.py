"""ResShift inference speed per stage, optionally side by side with another git revision.

    python benchmarks/resshift_speed.py                              # this tree, realsr-v3 arch, 64 & 128
    python benchmarks/resshift_speed.py --compare db0515b --sizes 64 128 256 --repeats 2 --threads 2
    python benchmarks/resshift_speed.py --compare db0515b --model fewstep-small
    python benchmarks/resshift_speed.py --memory                     # 1024 -> 4096 tiled, peak RSS
    python benchmarks/resshift_speed.py --memory --memory-size 256 --tile 128   # quick reduced form

`--compare REF` checks REF out into a temporary `git worktree` and alternates runs of REF and this
working tree (ABBA order, so a drifting machine load hits both alike). Every run is a fresh
subprocess whose PYTHONPATH points at that tree's `src`, with the same thread count, the same
weights (realsr-v3 architecture: random weights made once and saved; a named model: its own
files) and the same LR image and noise. Each run also measures this machine's fp32 sgemm
throughput (a 2048^3 matmul, same threads); the best of those is the "peak" the stages are
compared with. FLOPs are counted once (torch.utils.flop_counter.FlopCounterMode, with CPU
attention added: bench_common.flop_counter; in a separate untimed run of this tree) as the
model's FLOPs (3x3 convs counted as direct convolutions): with a FLOP-saving path (Winograd
convs, fast_upsample) the rates are effective ones; fast_upsample's executed FLOPs are printed
below the table. Reported per stage (VQ encoder, Swin UNet per step, VQ decoder, total):
seconds (best of the repeats), GFLOP, GFLOP/s, % of peak, REF/new; then REF against new
(`check_outputs`, fp32 within 1e-4 x max(1, max |x|)): the latent entering the vector quantiser,
the VQ codes (a differing code must be a tie at the scale of the latent difference), the decoder
on common codes, and the image.

The stage benchmark calls `ResShiftPipeline.sample` on the whole image (no tiling), so the LR
side must be a multiple of 64. `--memory` runs the tiled `Upscaler.restore` path instead and
prints the process' peak resident memory (issue 14 item 4: 1024^2 -> 4096^2 within 16 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
STAGES = ("encoder", "unet", "decoder")
FLOP_SAVING = ("fast_upsample",)  # --opt switches that execute fewer FLOPs than the model defines
STAGE_NAMES = {"encoder": "VQ encoder", "unet": "Swin UNet / step", "unet_all": "Swin UNet, all steps",
               "decoder": "VQ decoder", "total": "total"}


# ============================================================================================
# child side: one run in one tree
# ============================================================================================
def _check_tree(src: str) -> None:
    import fewstep

    where = Path(fewstep.__file__).resolve()
    if Path(src).resolve() not in where.parents:
        raise SystemExit(f"imported fewstep from {where}, expected it under {src} (PYTHONPATH not honoured)")


def _build(model: str, weights: str | None, device: str):
    """(pipeline, description) for `model`: 'realsr-v3' / 'tiny' (architectures, weights from
    `weights`) or a registered model name (its own weights)."""
    import torch

    if model in ("realsr-v3", "tiny"):
        from fewstep.resshift.chain import ResShiftChain
        from fewstep.resshift.pipeline import ResShiftPipeline
        from fewstep.resshift.presets import CHAIN_JOURNAL, UNET_REALSR, VQ_F4
        from fewstep.resshift.unet import SwinUNet
        from fewstep.resshift.vq import VQModel

        if model == "tiny":
            from bench_common import TINY_CHAIN, TINY_UNET, TINY_VQ
            ucfg, vcfg, ccfg = TINY_UNET, TINY_VQ, TINY_CHAIN
        else:
            ucfg, vcfg, ccfg = UNET_REALSR, VQ_F4, CHAIN_JOURNAL
        torch.manual_seed(0)
        unet, vq = SwinUNet(**ucfg), VQModel(**vcfg)
        if weights is not None and Path(weights).exists():
            sd = torch.load(weights, map_location="cpu", weights_only=True)
            # the recomputed buffers (masks, index tables) may differ between revisions in presence only
            unet.load_state_dict(sd["unet"], strict=False)
            vq.load_state_dict(sd["vq"], strict=False)
        elif weights is not None:
            torch.save({"unet": unet.state_dict(), "vq": vq.state_dict()}, weights)
        pipe = ResShiftPipeline(unet.eval(), vq.eval(), ResShiftChain(**ccfg), scale=4).to(device)
        return pipe
    import fewstep

    return fewstep.load(model, device=device).pipe


def _inputs(pipe, size: int, device: str):
    """LR in [-1, 1] (smooth random content) and the chain's noise, from fixed seeds."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(size)
    lr = F.interpolate(torch.rand(1, 3, size // 4, size // 4, generator=g), size=(size, size), mode="bicubic")
    lr = (lr + 0.05 * torch.randn(lr.shape, generator=g)).clamp(0, 1) * 2 - 1
    f = pipe.vq.downsample_factor
    shape = (1, pipe.vq.embed_dim, size * pipe.scale // f, size * pipe.scale // f)
    gn = torch.Generator().manual_seed(1234)
    noise = [torch.randn(shape, generator=gn).to(device) for _ in range(pipe.chain.steps + 1)]
    return lr.to(device), noise


def _apply_opts(pipe, opts) -> None:
    """Speed switches of `fewstep.nn.speed`, for the working tree only (REF may predate them)."""
    if not opts:
        return
    from fewstep.nn import speed

    if "fast_upsample" in opts:  # the default since session 5; kept for older command lines
        speed.FAST_UPSAMPLE = True
    if "no_fast_upsample" in opts:
        speed.FAST_UPSAMPLE = False
    if "no_winograd" in opts:
        speed.WINOGRAD = False
    if "nchw_vq" in opts:  # undo the pipeline's NHWC VQ (speed.CHANNELS_LAST_VQ)
        import torch

        pipe.vq.to(memory_format=torch.contiguous_format)
    if "no_inplace" in opts:
        speed.INPLACE = False
    nets = [pipe.unet, pipe.vq.encoder, pipe.vq.decoder] if hasattr(pipe.vq, "encoder") else [pipe.unet]
    for net in nets:
        if "channels_last" in opts:
            speed.channels_last(net)
        if "compile" in opts:
            speed.compile_module(net)


def _proxy_class():
    import torch

    class Proxy(torch.nn.Module):
        def __init__(self, inner, call):
            super().__init__()
            self.inner, self._call = inner, call

        def forward(self, *args, **kwargs):
            return self._call(*args, **kwargs)

        def __getattr__(self, name):  # lq_size, dtype, ... of the wrapped UNet
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(super().__getattr__("inner"), name)

    return Proxy


def _Proxy(inner, call):
    return _proxy_class()(inner, call)


class _StageTimer:
    """Wraps vq.encode, unet.forward and vq.decode (instance attributes shadow the methods) to
    time them and, when asked, count their FLOPs."""

    def __init__(self, pipe, device: str, count_flops: bool = False):
        import torch

        self.device, self.count = device, count_flops
        self.times = {s: [] for s in STAGES}
        self.flops = {s: 0 for s in STAGES}
        self.inputs: dict = {}  # last input of each stage (the decoder's is the latent the quantiser sees)
        self._sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        for name, owner, attr in (("encoder", pipe.vq, "encode"), ("decoder", pipe.vq, "decode")):
            setattr(owner, attr, self._wrap(name, getattr(owner, attr)))
        # the UNet through a proxy module, so the timer stays outside a compiled forward
        pipe.unet = _Proxy(pipe.unet, self._wrap("unet", pipe.unet.__call__))

    def _wrap(self, stage, fn):
        def timed(*args, **kwargs):
            self.inputs[stage] = args[0] if args else None
            if self.count:
                from bench_common import flop_counter

                with flop_counter() as fc:
                    out = fn(*args, **kwargs)
                self.flops[stage] += fc.get_total_flops()
                return out
            self._sync()
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            self._sync()
            self.times[stage].append(time.perf_counter() - t)
            return out
        return timed


def child(spec: dict) -> dict:
    import torch

    from bench_common import peak_rss_gib, sgemm_gflops

    _check_tree(spec["src"])
    torch.set_num_threads(spec["threads"])
    device = spec["device"]
    res = {"tree": spec["tree"], "threads": torch.get_num_threads(), "torch": torch.__version__}
    if spec.get("memory"):
        return {**res, **memory_case(spec)}
    pipe = _build(spec["model"], spec.get("weights"), device)
    if spec.get("make_weights"):
        return res
    if spec["tree"] == "new":
        _apply_opts(pipe, spec.get("opts", []))
    if spec.get("flops"):
        from fewstep.nn import speed

        # FlopCounterMode cannot see inside NNPACK's Winograd kernel: count those convs as direct ones
        winograd = bool(getattr(speed, "WINOGRAD", False) and speed.winograd_available())
        speed.WINOGRAD = False
        if spec.get("model_flops"):  # the model's FLOPs, not those a FLOP-saving path executes
            speed.FAST_UPSAMPLE = False
    lr, noise = _inputs(pipe, spec["size"], device)
    timer = _StageTimer(pipe, device, count_flops=spec.get("flops", False))
    kw = {} if spec["dtype"] == "fp32" else {"dtype": spec["dtype"]}
    if spec.get("flops"):
        pipe.sample(lr, noise=noise, **kw)
        return {**res, "flops": timer.flops, "steps": pipe.chain.steps, "winograd": winograd}
    for _ in range(spec.get("warmup", 0)):
        pipe.sample(lr, noise=noise, **kw)
    timer.times = {s: [] for s in STAGES}
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t = time.perf_counter()
    out = pipe.sample(lr, noise=noise, **kw)
    sync()
    total = time.perf_counter() - t
    res.update(times={"encoder": sum(timer.times["encoder"]), "unet": statistics.mean(timer.times["unet"]),
                      "unet_all": sum(timer.times["unet"]), "decoder": sum(timer.times["decoder"]), "total": total},
               peak=sgemm_gflops(device=device), rss_gib=peak_rss_gib(), steps=len(timer.times["unet"]))
    # after the timing: the common-latent decode below goes through the timed wrapper too
    torch.save(_outputs(pipe, out, timer.inputs["decoder"], spec.get("check", False)), spec["out"])
    return res


def _outputs(pipe, image, latent, check: bool) -> dict:
    """What the parent compares: the image, the latent entering the quantiser, its codes and the
    codebook; with `check`, also the decoder's output for a latent every tree is given alike (codebook
    vectors at seeded random indices, decoded without quantising), i.e. the decoder's own arithmetic."""
    import torch

    res = {"image": image.float().cpu(), "latent": latent.float().cpu()}
    quant = getattr(pipe.vq, "quantize", None)
    with torch.no_grad():
        if quant is not None:
            res["codes"] = quant.codes(latent).cpu()
            res["codebook"] = quant.embedding.weight.detach().float().cpu()
        if check:
            g = torch.Generator().manual_seed(4321)
            if quant is not None:
                idx = torch.randint(quant.embedding.num_embeddings, latent.shape[-2:], generator=g)
                common = quant.embedding.weight.detach()[idx].permute(2, 0, 1)[None]
            else:
                common = torch.randn(latent.shape, generator=g)
            common = common.to(latent.device, latent.dtype).contiguous()
            res["decoded_common"] = pipe.vq.decode(common, force_not_quantize=True).float().cpu()
    return res


def check_outputs(ref: dict, new: dict, tol: float) -> tuple[bool, list[str]]:
    """(all within tolerance, report lines) for REF's and the new tree's outputs of one input.

    A vector quantiser is discontinuous: where the latent lies within fp32 rounding of a tie
    between two codebook vectors, any change of summation order upstream (another conv layout,
    thread count or CPU) may pick the other code, and the decoder's global attention spreads that
    change over the whole image. So the continuous arithmetic is checked where it is continuous:
    the latent entering the quantiser and the decoder on common codes (each within `tol` x
    max(1, max |value|)); each differing code must be a tie at the scale of the latent difference
    there (the triangle inequality bounds how far a shift of |delta| can move the nearest code);
    and with no differing code the image itself must be within `tol`."""
    import torch

    def within(name: str, a: torch.Tensor, b: torch.Tensor, judged: str | None = None) -> tuple[bool, str]:
        """`judged`: None to judge against the tolerance, else the reason printed instead."""
        d = (a - b).abs().max().item()
        mag = max(1.0, a.abs().max().item())
        ok = d <= tol * mag
        verdict = f"({judged}; not judged)" if judged else ("OK" if ok else f"FAIL (> {tol:g} x {mag:.3g})")
        return ok, f"{name}: max |Δ| {d:.2e} {verdict} (max |x| {mag:.3g}, relative {d / mag:.1e})"

    lines, oks = [], []
    ok, line = within("latent entering the quantiser (encoder + chain)", ref["latent"], new["latent"])
    oks.append(ok), lines.append(line)
    flips = 0
    if "codes" in ref and "codes" in new:
        diff = ref["codes"] != new["codes"]
        flips, total = int(diff.sum()), diff.numel()
        if flips:
            z = ref["latent"].double().permute(0, 2, 3, 1)[diff]  # (flips, C)
            delta = (new["latent"] - ref["latent"]).double().permute(0, 2, 3, 1)[diff].norm(dim=1)
            book = ref["codebook"].double()
            e_ref, e_new = book[ref["codes"][diff]], book[new["codes"][diff]]
            d_ref, d_new = (z - e_ref).norm(dim=1), (z - e_new).norm(dim=1)
            # |z' - e_new| <= |z' - e_ref| with z' = z + delta gives |z - e_new| - |z - e_ref| <= 2 |delta|;
            # plus the fp32 rounding of the quantiser's |z|^2 + |e|^2 - 2 z.e (in distance units)
            slack = 8 * 2.0 ** -24 * (z.norm(dim=1) + e_ref.norm(dim=1) + e_new.norm(dim=1)) ** 2 / (d_ref + d_new).clamp_min(1e-12)
            margin, bound = d_new - d_ref, 2 * delta + slack
            ties = bool((margin <= bound).all())
            oks.append(ties)
            lines.append(f"VQ codes: {flips} of {total} differ ({100 * flips / total:.3f} %); "
                         f"{'each is a tie within the latent difference there' if ties else 'NOT all ties: FAIL'} "
                         f"(largest distance margin {margin.max().item():.1e}, its bound {bound[margin.argmax()].item():.1e})")
        else:
            lines.append(f"VQ codes: all {total} equal")
    if "decoded_common" in ref and "decoded_common" in new:
        ok, line = within("decoder on common codes", ref["decoded_common"], new["decoded_common"])
        oks.append(ok), lines.append(line)
    ok, line = within("image", ref["image"], new["image"], "changed by the differing codes" if flips else None)
    if not flips:
        oks.append(ok)
    lines.append(line)
    return all(oks), lines


def memory_case(spec: dict) -> dict:
    """Tiled restore of a size x size LR (x4) through the Upscaler; peak RSS of this process."""
    import torch

    from bench_common import peak_rss_gib
    from fewstep.resshift.pipeline import ResShiftUpscaler

    pipe = _build(spec["model"], spec.get("weights"), spec["device"])
    up = ResShiftUpscaler(pipe, tile=spec["tile"], overlap=spec["overlap"], tile_batch=spec.get("tile_batch", 1))
    size = spec["size"]
    lr = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    before = peak_rss_gib()
    t = time.perf_counter()
    out = up.restore(lr, seed=0)
    from fewstep.tiling import plan_tiles

    return {"seconds": time.perf_counter() - t, "out": list(out.shape[-2:]), "rss_before_gib": before,
            "peak_rss_gib": peak_rss_gib(), "tiles": len(plan_tiles(size, size, spec["tile"], spec["overlap"]).tiles())}


# ============================================================================================
# parent side
# ============================================================================================
def run_child(spec: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=spec["src"] + os.pathsep + str(HERE),
               OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]))
    res = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
                         capture_output=True, text=True, env=env, cwd=spec["src"])
    if res.returncode != 0:
        tail = "\n".join(res.stderr.strip().splitlines()[-6:])
        raise SystemExit(f"run in tree {spec['tree']} ({spec['src']}) failed:\n{tail}")
    return json.loads(res.stdout.strip().splitlines()[-1])


class RefTree:
    """`git worktree add --detach` of REF in a temporary folder, removed on exit."""

    def __init__(self, ref: str):
        self.ref = ref
        self.tmp = tempfile.mkdtemp(prefix="fewstep-ref-")
        self.path = Path(self.tmp) / "tree"

    def __enter__(self) -> Path:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", self.ref], capture_output=True, text=True)
        if rev.returncode != 0:
            raise SystemExit(f"--compare {self.ref}: not a git revision of {REPO}")
        self.rev = rev.stdout.strip()
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(self.path), self.ref],
                       check=True)
        return self.path

    def __exit__(self, *exc) -> None:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(self.path)], capture_output=True)
        subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], capture_output=True)
        import shutil

        shutil.rmtree(self.tmp, ignore_errors=True)


def _fmt_row(name, gflop, per_tree, ref, new, peak) -> str:
    cells = [name, f"{gflop:.1f}" if gflop else "-"]
    for tree in [t for t in (ref, new) if t]:
        s = per_tree[tree]
        rate = gflop / s if gflop else 0.0
        cells += [f"{s:.3f}", f"{rate:.1f}" if gflop else "-", f"{100 * rate / peak:.0f} %" if gflop else "-"]
    if ref:
        cells.append(f"x{per_tree[ref] / per_tree[new]:.2f}")
    return "| " + " | ".join(cells) + " |"


def compare(args) -> None:
    import contextlib

    import torch

    trees = {"new": str(REPO / "src")}
    ref_ctx = RefTree(args.compare) if args.compare else contextlib.nullcontext()
    with ref_ctx as ref_path, tempfile.TemporaryDirectory(prefix="fewstep-speed-") as tmp:
        if ref_path is not None:
            trees["ref"] = str(ref_path / "src")
        weights = str(Path(tmp) / "weights.pt") if args.model in ("realsr-v3", "tiny") else None
        base = dict(model=args.model, threads=args.threads, device=args.device, dtype=args.dtype, weights=weights,
                    warmup=args.warmup, opts=args.opt)
        if weights:  # made once by this tree, loaded by every run
            run_child(dict(base, tree="new", src=trees["new"], size=64, make_weights=True))
        label = {"new": "working tree", "ref": f"REF {getattr(ref_ctx, 'rev', '')}".strip()}
        print(f"# ResShift stage benchmark: model {args.model}, {args.device} {args.dtype}, {args.threads} threads, "
              f"{args.repeats} run(s) per tree (ABBA order), torch {torch.__version__}")
        for name, src in trees.items():
            print(f"#   {name}: {label[name]} ({src})" + (f", options {','.join(args.opt)}" if name == "new" and args.opt else ""))
        for size in args.sizes:
            if size % 64:
                raise SystemExit(f"--sizes: {size} is not a multiple of 64")
            spec = dict(base, size=size)
            # model FLOPs (the rates below are "effective": FLOP-saving switches do not lower them)
            plain = [o for o in args.opt if o not in FLOP_SAVING]
            counted = run_child(dict(spec, tree="new", src=trees["new"], flops=True, model_flops=True, opts=plain))
            flops, winograd = counted["flops"], counted["winograd"]
            # fast_upsample's executed FLOPs; not with Winograd convs, whose multiplies are not counted
            executed = None if winograd else run_child(dict(spec, tree="new", src=trees["new"], flops=True))["flops"]
            if executed and all(abs(executed[k] - flops[k]) <= 1e-6 * flops[k] for k in STAGES):
                executed = None
            order = list(trees)
            runs: dict[str, list[dict]] = {t: [] for t in trees}
            for r in range(args.repeats):
                for tree in (order if r % 2 == 0 else order[::-1]):
                    out = str(Path(tmp) / f"{tree}_{size}_{r}.pt")
                    runs[tree].append(run_child(dict(spec, tree=tree, src=trees[tree], out=out, check=r == 0))
                                      | {"out": out})
            peak = max(r["peak"] for rs in runs.values() for r in rs)
            steps = runs["new"][0]["steps"]
            gflop = {"encoder": flops["encoder"] / 1e9, "unet": flops["unet"] / 1e9 / steps,
                     "unet_all": flops["unet"] / 1e9, "decoder": flops["decoder"] / 1e9}
            gflop["total"] = gflop["encoder"] + gflop["unet_all"] + gflop["decoder"]
            best = {t: {k: min(r["times"][k] for r in rs) for k in STAGE_NAMES} for t, rs in runs.items()}
            ref = "ref" if "ref" in trees else None
            print(f"\n## {size} -> {4 * size}   (sgemm peak {peak:.1f} GFLOP/s, best of "
                  f"{sum(len(v) for v in runs.values())} runs; times = best of {args.repeats})")
            head = ["stage", "GFLOP"]
            for t in [x for x in (ref, "new") if x]:
                head += [f"{t} s", f"{t} GF/s", f"{t} % peak"]
            if ref:
                head.append("ref/new")
            print("| " + " | ".join(head) + " |")
            print("|" + "---|" * len(head))
            for k, name in STAGE_NAMES.items():
                print(_fmt_row(name, gflop[k], {t: best[t][k] for t in trees}, ref, "new", peak))
            if winograd:
                print("3x3 convs through Winograd (NNPACK, fewstep.nn.speed.WINOGRAD) in the new tree: its rates are "
                      "effective ones (the model's FLOPs as direct convolutions / time)")
            if executed:
                print("executed GFLOP (FLOP-saving paths: fast_upsample): " +
                      ", ".join(f"{STAGE_NAMES[k]} {executed[k] / 1e9 / (steps if k == 'unet' else 1):.1f}"
                                for k in STAGES))
            outs = {t: [torch.load(r["out"], weights_only=True) for r in rs] for t, rs in runs.items()}
            rep = max(((o["image"] - outs["new"][0]["image"]).abs().max().item() for o in outs["new"][1:]), default=0.0)
            line = f"max |Δ| between repeats (new): {rep:.2e}; peak RSS new {max(r['rss_gib'] for r in runs['new']):.2f} GiB"
            if ref:
                line += f", ref {max(r['rss_gib'] for r in runs['ref']):.2f} GiB"
                ok, lines = check_outputs(outs["ref"][0], outs["new"][0], args.tol)
                print(f"ref vs new, fp32 tolerance {args.tol:g} x max(1, max |x|): {'OK' if ok else 'FAIL'}")
                for item in lines:
                    print(f"- {item}")
            print(line)
            spread = {t: [round(r["times"]["total"], 3) for r in rs] for t, rs in runs.items()}
            print(f"all totals (s): {spread}")


def memory(args) -> None:
    import contextlib

    with tempfile.TemporaryDirectory(prefix="fewstep-mem-") as tmp:
        weights = str(Path(tmp) / "weights.pt") if args.model in ("realsr-v3", "tiny") else None
        src = str(REPO / "src")
        base = dict(model=args.model, threads=args.threads, device="cpu", dtype="fp32", weights=weights, tree="new",
                    src=src)
        r = run_child(dict(base, memory=True, size=args.memory_size, tile=args.tile, overlap=args.overlap,
                           tile_batch=args.tile_batch))
        with contextlib.suppress(KeyError):
            target = 16.0
            ok = "OK" if r["peak_rss_gib"] <= target else "OVER"
            print(f"# ResShift tiled memory: model {args.model}, {args.threads} threads, torch {r['torch']}")
            print("| LR -> SR | tile/overlap (LR px) | tiles | tile batch | s | peak RSS (GiB) | target 16 GB |")
            print("|---|---|---|---|---|---|---|")
            print(f"| {args.memory_size} -> {r['out'][0]} | {args.tile}/{args.overlap} | {r['tiles']} | "
                  f"{args.tile_batch} | {r['seconds']:.1f} | {r['peak_rss_gib']:.2f} | {ok} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compare", metavar="REF", help="git revision to run side by side with the working tree")
    ap.add_argument("--model", default="realsr-v3",
                    help="'realsr-v3' (full-size architecture, random weights; default), 'tiny', or a "
                         "registered model with local weights, e.g. fewstep-small")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="LR sizes (square, multiples of 64)")
    ap.add_argument("--repeats", type=int, default=2, help="runs per tree (alternated)")
    ap.add_argument("--warmup", type=int, default=0, help="untimed runs inside each process before the timed one")
    ap.add_argument("--threads", type=int, default=torch_threads_default())
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--opt", action="append", default=[], choices=["channels_last", "compile", "fast_upsample", "no_fast_upsample", "nchw_vq",
                                                                   "no_inplace", "no_winograd"],
                    help="speed switch for the working tree's networks (repeatable); 'compile' needs --warmup 1 "
                         "(the first call compiles; inductor caches the result on disk for later processes)")
    ap.add_argument("--tol", type=float, default=1e-4,
                    help="max |ref - new| allowed (fp32), times max(1, max |output|)")
    ap.add_argument("--memory", action="store_true", help="tiled 1024 -> 4096 run: peak RSS (no comparison)")
    ap.add_argument("--memory-size", type=int, default=1024)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--overlap", type=int, default=32)
    ap.add_argument("--tile-batch", type=int, default=1)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
    elif args.memory:
        memory(args)
    else:
        compare(args)


def torch_threads_default() -> int:
    return int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)


if __name__ == "__main__":
    main()
