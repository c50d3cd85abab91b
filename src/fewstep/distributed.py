"""Processes, devices and precisions: which share of a batch this process does, and on what.

`torchrun --nproc-per-node N -m fewstep upscale ...` and `accelerate launch` start N copies of the
command with RANK / WORLD_SIZE / LOCAL_RANK in the environment. Batch inference needs no
communication between them: every rank builds the same plan (a sorted listing), takes its own share
(`Plan.share(rank, world)`, round robin), uses one device (cuda:LOCAL_RANK) and resumes by skipping
its outputs that exist. Seeds depend on the input and --seed only, so the bytes written do not
depend on the number of processes. On several machines the same holds as long as all of them see
the inputs and the output folder at the same paths (a shared file system).

`resolve_device` and `check_dtype` validate --device / --dtype up front with one-line errors.
"""

from __future__ import annotations

import os

from .errors import FewstepError


def rank_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the launcher's environment; (0, 1, 0) when alone."""
    def env_int(name: str, default: int) -> int:
        value = os.environ.get(name, "")
        if value == "":
            return default
        try:
            return int(value)
        except ValueError:
            raise FewstepError(f"environment variable {name}={value!r} is not an integer") from None

    world = env_int("WORLD_SIZE", 1)
    rank = env_int("RANK", 0)
    local = env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise FewstepError(f"RANK={rank} / WORLD_SIZE={world} / LOCAL_RANK={local} are inconsistent")
    return rank, world, local


_DEVICE_HELP = "use cpu, cuda, cuda:N, mps or auto"


def resolve_device(device: str, local_rank: int = 0, world: int = 1) -> str:
    """The device string a model is built on, or a one-line FewstepError.

    "auto" is cuda when a GPU is visible, else cpu. With several processes, "auto"/"cuda" mean
    this process's own GPU: cuda:(LOCAL_RANK mod the number of GPUs)."""
    import torch

    spec = (device or "auto").strip().lower()
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError):
        raise FewstepError(f"--device {device!r}: not a device; {_DEVICE_HELP}") from None
    if dev.type == "cpu":
        return "cpu"
    if dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise FewstepError(f"--device {device}: MPS (Apple GPU) is not available here; use --device cpu")
        return "mps"
    if dev.type != "cuda":
        raise FewstepError(f"--device {device!r}: {dev.type} devices are not supported; {_DEVICE_HELP}")
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        raise FewstepError(f"--device {device}: this torch build ({torch.__version__}) has no CUDA support; "
                           "install a CUDA build of torch or use --device cpu")
    if not torch.cuda.is_available():
        raise FewstepError(f"--device {device}: no CUDA GPU is visible (driver missing or "
                           f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}); use --device cpu")
    count = torch.cuda.device_count()
    index = dev.index if dev.index is not None else (local_rank % count if world > 1 else 0)
    if index >= count:
        raise FewstepError(f"--device {device}: only {count} CUDA device(s) visible (cuda:0..cuda:{count - 1})")
    return f"cuda:{index}"


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 arithmetic (AVX512-BF16 or AMX); elsewhere torch emulates it."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    import torch

    # no /proc/cpuinfo (macOS, Windows): torch's dispatch level is the best hint available
    return "AMX" in str(torch.backends.cpu.get_cpu_capability()).upper()


def check_dtype(dtype: str, device: str) -> str | None:
    """Refuse precisions that cannot work on `device` (FewstepError); return a warning line when
    one will be very slow, else None."""
    if dtype not in ("fp32", "bf16", "fp16"):
        raise FewstepError(f"--dtype must be fp32, bf16 or fp16, got {dtype!r}")
    if device == "cpu":
        if dtype == "fp16":
            raise FewstepError("--dtype fp16 is for GPUs: on CPU it is emulated and far slower than fp32 "
                               "(measured 85x); use --dtype fp32 (or bf16 on a CPU with AVX512-BF16/AMX)")
        if dtype == "bf16" and not cpu_has_native_bf16():
            return ("--dtype bf16: this CPU has no native bf16 (AVX512-BF16 or AMX), so it is emulated: "
                    "expect it to run tens of times slower than fp32 (85x measured); --dtype fp32 is faster")
    elif device.startswith("cuda") and dtype == "bf16":
        import torch

        if not torch.cuda.is_bf16_supported():
            raise FewstepError(f"--dtype bf16: {torch.cuda.get_device_name(device)} has no bf16 support; use fp16 or fp32")
    return None
