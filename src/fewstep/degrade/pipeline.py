"""Real-ESRGAN second-order degradation (Wang et al. 2021, Apache-2.0; re-implemented here).

Order per sample (Real-ESRGAN / ResShift `prepare_data`):
  1st: blur → random resize (up/down/keep; area/bilinear/bicubic) → Gaussian or Poisson noise
       (colour or gray) → clamp → JPEG
  2nd (with probability second_order_prob): blur (with blur_prob) → resize relative to the LR size
       → noise
  final: 50/50 [resize to H/s × W/s + sinc] → JPEG, or JPEG → [resize + sinc]; clamp (+ round)

Determinism: every sample has its own integer seed. Parameters are drawn from
`numpy.random.Generator(PCG64(seed))` and noise from a CPU `torch.Generator` seeded from it, so the
same seed gives the same draws on any machine and any batch size; image ops run on the input's
device (GPU results can differ from CPU by float rounding only).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import FewstepError
from . import kernels as K
from .jpeg import jpeg_tensor
from .noise import gaussian_noise, poisson_noise
from .presets import PRESETS, BicubicPreset, BlurNoiseStage, FacePreset, RealESRGANPreset


def get_preset(preset) -> RealESRGANPreset | BicubicPreset | FacePreset:
    if isinstance(preset, (RealESRGANPreset, BicubicPreset, FacePreset)):
        return preset
    if preset not in PRESETS:
        raise FewstepError(f"unknown degradation preset {preset!r}; available: {', '.join(PRESETS)}")
    return PRESETS[preset]


def filter2d(img: torch.Tensor, kernel: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Correlate (C,H,W) with a k×k kernel per channel, reflect-padded (replicate if too small)."""
    k = torch.as_tensor(kernel, dtype=img.dtype, device=img.device)
    ks = k.shape[-1]
    p = ks // 2
    x = img[None]
    mode = "reflect" if p < min(img.shape[-2:]) else "replicate"
    x = F.pad(x, (p, p, p, p), mode=mode)
    c = img.shape[0]
    return F.conv2d(x, k.expand(c, 1, ks, ks), groups=c)[0]


def resize(img: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """(C,H,W) → (C,*size) with torch's area/bilinear/bicubic (no antialias, as Real-ESRGAN)."""
    size = (max(1, int(size[0])), max(1, int(size[1])))
    kw = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(img[None], size=size, mode=mode, **kw)[0]


def _random_scale(rng: np.random.Generator, stage: BlurNoiseStage) -> tuple[float, str]:
    kind = int(rng.choice(3, p=np.asarray(stage.resize_prob) / sum(stage.resize_prob)))
    if kind == 0:
        scale = float(rng.uniform(1.0, stage.resize_range[1]))
    elif kind == 1:
        scale = float(rng.uniform(stage.resize_range[0], 1.0))
    else:
        scale = 1.0
    mode = stage.resize_modes[int(rng.integers(len(stage.resize_modes)))]
    return scale, mode


def _add_noise(img, rng, gen, stage: BlurNoiseStage, log: dict) -> torch.Tensor:
    if rng.uniform() < stage.gaussian_noise_prob:
        sigma = float(rng.uniform(*stage.noise_range))
        gray = bool(rng.uniform() < stage.gray_noise_prob)
        log.update(noise="gaussian", sigma=sigma, gray=gray)
        out = img + gaussian_noise(img, sigma, gray, gen)
    else:
        scale = float(rng.uniform(*stage.poisson_scale_range))
        gray = bool(rng.uniform() < stage.gray_noise_prob)
        log.update(noise="poisson", poisson_scale=scale, gray=gray)
        out = img + poisson_noise(img, scale, gray, gen)
    return out.clamp(0, 1)


def _stage_kernel(rng, stage: BlurNoiseStage):
    return K.random_blur_or_sinc(
        rng, stage.kernel_sizes, stage.sinc_prob, stage.kernel_list, stage.kernel_prob,
        stage.blur_sigma, stage.betag_range, stage.betap_range,
    )


def _realesrgan_one(hr: torch.Tensor, p: RealESRGANPreset, scale: int, seed: int, log: dict) -> torch.Tensor:
    rng = np.random.Generator(np.random.PCG64(int(seed)))
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(rng.integers(0, 2**62)))
    h, w = hr.shape[-2:]
    lr_size = (h // scale, w // scale)
    # Draw every random parameter in a fixed order, whether or not a branch uses it, so that the
    # stream (and so every later choice) does not depend on image content.
    k1, k1p = _stage_kernel(rng, p.first)
    k2, k2p = _stage_kernel(rng, p.second)
    use_second = bool(rng.uniform() < p.second_order_prob)
    blur2 = bool(rng.uniform() < p.second.blur_prob)
    if rng.uniform() < p.final.sinc_prob:
        size = int(p.final.sinc_sizes[int(rng.integers(len(p.final.sinc_sizes)))])
        cutoff = float(rng.uniform(math.pi / 3, math.pi))
        k3, k3p = K.sinc_kernel(size, cutoff), {"type": "sinc", "size": size, "cutoff": cutoff}
    else:
        k3, k3p = None, {"type": "identity"}
    no_degrade = bool(rng.uniform() < p.no_degradation_prob)

    # first order
    x = filter2d(hr, k1)
    s1, m1 = _random_scale(rng, p.first)
    x = resize(x, (int(h * s1), int(w * s1)), m1)
    st1: dict = {"kernel": k1p, "resize": s1, "mode": m1}
    x = _add_noise(x, rng, gen, p.first, st1)
    if p.first.jpeg_range is not None:
        q1 = float(rng.uniform(*p.first.jpeg_range))
        st1["jpeg"] = q1
        x = jpeg_tensor(x.clamp(0, 1), q1)
    log["first"] = st1

    # second order
    if use_second:
        st2: dict = {"kernel": k2p if blur2 else None}
        if blur2:
            x = filter2d(x, k2)
        s2, m2 = _random_scale(rng, p.second)
        x = resize(x, (int(h / scale * s2), int(w / scale * s2)), m2)
        st2.update(resize=s2, mode=m2)
        x = _add_noise(x, rng, gen, p.second, st2)
        log["second"] = st2

    # final: resize to the LR size + sinc, and JPEG, in random order
    resize_first = bool(rng.uniform() < p.final.resize_sinc_first_prob)
    mode = p.final.resize_modes[int(rng.integers(len(p.final.resize_modes)))]
    q = float(rng.uniform(*p.final.jpeg_range))
    log["final"] = {"resize_sinc_first": resize_first, "mode": mode, "jpeg": q, "sinc": k3p}

    def resize_sinc(t):
        t = resize(t, lr_size, mode)
        return filter2d(t, k3) if k3 is not None else t

    if resize_first:
        x = jpeg_tensor(resize_sinc(x).clamp(0, 1), q)
    else:
        x = resize_sinc(jpeg_tensor(x.clamp(0, 1), q))
    x = x.clamp(0, 1)
    if no_degrade:
        from .resize import imresize

        log["no_degradation"] = True
        x = imresize(hr, output_shape=lr_size).clamp(0, 1)
    if p.round_output:
        x = torch.round(x * 255.0) / 255.0
    return x


def degrade_one(hr: torch.Tensor, preset="resshift", scale: int = 4, seed: int = 0, log: dict | None = None) -> torch.Tensor:
    """hr (3,H,W) float in [0,1] on any device -> lr (3,H/scale,W/scale). `log` receives the draws."""
    p = get_preset(preset)
    if hr.ndim != 3 or hr.shape[0] != 3:
        raise FewstepError(f"expected an HR tensor of shape (3,H,W), got {tuple(hr.shape)}")
    h, w = hr.shape[-2:]
    log = {} if log is None else log
    log.update(preset=p.name, seed=int(seed), scale=int(scale))
    if isinstance(p, FacePreset):
        from .face import degrade_face_tensor

        return degrade_face_tensor(hr, p, seed, log)
    if scale < 1 or h % scale or w % scale:
        raise FewstepError(f"image size {h}x{w} is not a multiple of scale {scale}; crop it first")
    if isinstance(p, BicubicPreset):
        from .resize import imresize

        x = imresize(hr.double(), output_shape=(h // scale, w // scale), antialias=p.antialias)
        return torch.round(x.clamp(0, 1) * 255.0).to(hr.dtype) / 255.0
    return _realesrgan_one(hr, p, int(scale), int(seed), log)


def sample_seeds(n: int, generator: torch.Generator | np.random.Generator | int) -> list[int]:
    """n per-sample seeds drawn from a torch/numpy generator (or an int seed)."""
    if isinstance(generator, torch.Generator):
        return [int(v) for v in torch.randint(0, 2**62, (n,), generator=generator, device=generator.device).tolist()]
    if isinstance(generator, np.random.Generator):
        return [int(v) for v in generator.integers(0, 2**62, size=n)]
    return [int(v) for v in np.random.SeedSequence(int(generator)).generate_state(n, dtype=np.uint64) >> 2]


def degrade_batch(
    hr: torch.Tensor,
    preset="resshift",
    scale: int = 4,
    generator: torch.Generator | np.random.Generator | int | None = None,
    seeds: Sequence[int] | None = None,
    logs: list | None = None,
) -> torch.Tensor:
    """hr (B,3,H,W) in [0,1] -> lr (B,3,H/scale,W/scale) on hr's device.

    Sample i uses `seeds[i]` (or a seed drawn from `generator`); it equals `degrade_one(hr[i],
    seed=seeds[i])`, so results do not depend on the batch composition.
    """
    if hr.ndim != 4 or hr.shape[1] != 3:
        raise FewstepError(f"expected an HR batch of shape (B,3,H,W), got {tuple(hr.shape)}")
    if seeds is None:
        if generator is None:
            raise FewstepError("degrade_batch needs a generator or explicit per-sample seeds")
        seeds = sample_seeds(hr.shape[0], generator)
    if len(seeds) != hr.shape[0]:
        raise FewstepError(f"got {len(seeds)} seeds for a batch of {hr.shape[0]}")
    out = []
    for i in range(hr.shape[0]):
        log: dict = {}
        out.append(degrade_one(hr[i], preset, scale, int(seeds[i]), log))
        if logs is not None:
            logs.append(log)
    return torch.stack(out)


def degrade(hr: np.ndarray, preset="resshift-test", scale: int = 4, seed: int = 0, log: dict | None = None) -> np.ndarray:
    """HxWx3 uint8 RGB -> LR HxWx3 uint8 (H/scale × W/scale; same size for the `faceir` preset)."""
    arr = np.asarray(hr)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise FewstepError(f"expected an HxWx3 RGB array, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise FewstepError(f"expected a uint8 image, got {arr.dtype}")
    p = get_preset(preset)
    if isinstance(p, BicubicPreset):  # stay in numpy: exact MATLAB uint8 behaviour
        from .resize import imresize

        h, w = arr.shape[:2]
        if scale < 1 or h % scale or w % scale:
            raise FewstepError(f"image size {h}x{w} is not a multiple of scale {scale}; crop it first")
        if log is not None:
            log.update(preset=p.name, seed=int(seed), scale=int(scale))
        return imresize(arr, output_shape=(h // scale, w // scale), antialias=p.antialias)
    if isinstance(p, FacePreset):
        from .face import degrade_face

        return degrade_face(arr, p, seed, log)
    x = torch.from_numpy(np.array(arr, dtype=np.float32)).permute(2, 0, 1) / 255.0
    y = degrade_one(x, p, scale, seed, log)
    return torch.clamp(torch.round(y * 255.0), 0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
