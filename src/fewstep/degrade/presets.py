"""Degradation presets: plain data, no code.

Sources (see /work/shared/specs):
- `resshift`: resshift.md §7.1, the journal real-SR config `realsr_swinunet_realesrgan256_journal.yaml`.
- `resshift-test`: resshift.md §7.4, `configs/degradation_testing_realesrgan.yaml` (values that the
  spec elides with "…" are taken from that config file).
- `s3diff`: s3diff.md §8.2 (`params_realesrgan.yml`, milder than standard Real-ESRGAN).
- `bicubic`: MATLAB bicubic ×1/scale only (resshift.md §7.2, bicsr).
- `faceir`: GFPGAN-style face degradation (resshift.md §7.2, `faceir_gfpgan512_lpips.yaml`).

Kernel sizes are listed explicitly (odd sizes). ResShift draws from 3..blur_kernel_size (its range
starts at 3, resshift.md §7.1); standard Real-ESRGAN (and so S3Diff) from 7..21.
"""

from __future__ import annotations

from dataclasses import dataclass, field

KERNELS6 = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")


@dataclass(frozen=True)
class BlurNoiseStage:
    """One blur → random resize → noise (→ JPEG for the first stage) block of Real-ESRGAN."""

    blur_prob: float
    kernel_sizes: tuple[int, ...]
    kernel_list: tuple[str, ...]
    kernel_prob: tuple[float, ...]
    sinc_prob: float
    blur_sigma: tuple[float, float]
    betag_range: tuple[float, float]
    betap_range: tuple[float, float]
    resize_prob: tuple[float, float, float]  # up, down, keep
    resize_range: tuple[float, float]
    gaussian_noise_prob: float
    noise_range: tuple[float, float]  # sigma on the 0..255 scale
    poisson_scale_range: tuple[float, float]
    gray_noise_prob: float
    jpeg_range: tuple[float, float] | None  # None: no JPEG at the end of this stage
    resize_modes: tuple[str, ...] = RESIZE_MODES


@dataclass(frozen=True)
class FinalStage:
    """Resize to the LR size + sinc, and JPEG, in random order."""

    resize_sinc_first_prob: float  # probability of [resize + sinc] then JPEG (else JPEG first)
    sinc_prob: float
    sinc_sizes: tuple[int, ...]
    jpeg_range: tuple[float, float]
    resize_modes: tuple[str, ...] = RESIZE_MODES


@dataclass(frozen=True)
class RealESRGANPreset:
    name: str
    description: str
    first: BlurNoiseStage
    second: BlurNoiseStage
    second_order_prob: float
    final: FinalStage
    round_output: bool  # clamp + round to 8-bit levels at the end (S3Diff only clamps)
    no_degradation_prob: float = 0.0  # LR = plain MATLAB-bicubic downscale of the HR
    kind: str = "realesrgan"
    # Training-crop conventions recorded for reference (used by datasets, not by `degrade`)
    gt_size: int = 256
    notes: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class BicubicPreset:
    name: str
    description: str
    antialias: bool = True
    kind: str = "bicubic"


@dataclass(frozen=True)
class FacePreset:
    """GFPGAN `FFHQDegradationDataset`: blur → downsample → noise → JPEG → resize back."""

    name: str
    description: str
    kernel_size: int
    kernel_list: tuple[str, ...]
    kernel_prob: tuple[float, ...]
    blur_sigma: tuple[float, float]
    downsample_range: tuple[float, float]
    noise_range: tuple[float, float]
    jpeg_range: tuple[float, float]
    gray_prob: float
    kind: str = "face"


RESSHIFT = RealESRGANPreset(
    name="resshift",
    description="ResShift real-SR training degradation (Real-ESRGAN second order, resshift.md §7.1)",
    first=BlurNoiseStage(
        blur_prob=1.0,
        kernel_sizes=(3, 5, 7, 9, 11, 13, 15, 17, 19, 21),
        kernel_list=KERNELS6,
        kernel_prob=(0.45, 0.25, 0.12, 0.03, 0.12, 0.03),
        sinc_prob=0.1,
        blur_sigma=(0.2, 3.0),
        betag_range=(0.5, 4.0),
        betap_range=(1.0, 2.0),
        resize_prob=(0.2, 0.7, 0.1),
        resize_range=(0.15, 1.5),
        gaussian_noise_prob=0.5,
        noise_range=(1.0, 30.0),
        poisson_scale_range=(0.05, 3.0),
        gray_noise_prob=0.4,
        jpeg_range=(30.0, 95.0),
    ),
    second=BlurNoiseStage(
        blur_prob=0.8,
        kernel_sizes=(3, 5, 7, 9, 11, 13, 15),
        kernel_list=KERNELS6,
        kernel_prob=(0.45, 0.25, 0.12, 0.03, 0.12, 0.03),
        sinc_prob=0.1,
        blur_sigma=(0.2, 1.5),
        betag_range=(0.5, 4.0),
        betap_range=(1.0, 2.0),
        resize_prob=(0.3, 0.4, 0.3),
        resize_range=(0.3, 1.2),
        gaussian_noise_prob=0.5,
        noise_range=(1.0, 25.0),
        poisson_scale_range=(0.05, 2.5),
        gray_noise_prob=0.4,
        jpeg_range=None,
    ),
    second_order_prob=0.5,
    final=FinalStage(resize_sinc_first_prob=0.5, sinc_prob=0.8, sinc_sizes=(3, 5, 7, 9, 11, 13, 15, 17, 19, 21), jpeg_range=(30.0, 95.0)),
    round_output=True,
    gt_size=256,
    notes=("GT: hflip; square crop of side max(min(h,w),256) then INTER_AREA to 256 (rescale_gt)",),
)

RESSHIFT_TEST = RealESRGANPreset(
    name="resshift-test",
    description="ResShift ImageNet-Test synthesis: mild first-order Real-ESRGAN (resshift.md §7.4)",
    first=BlurNoiseStage(
        blur_prob=1.0,
        kernel_sizes=(3, 5, 7, 9, 11, 13),
        kernel_list=KERNELS6,
        kernel_prob=(0.60, 0.40, 0.0, 0.0, 0.0, 0.0),
        sinc_prob=0.1,
        blur_sigma=(0.2, 0.8),
        betag_range=(1.0, 1.5),
        betap_range=(1.0, 1.2),
        resize_prob=(0.2, 0.7, 0.1),
        resize_range=(0.5, 1.5),
        gaussian_noise_prob=0.5,
        noise_range=(1.0, 15.0),
        poisson_scale_range=(0.05, 0.3),
        gray_noise_prob=0.4,
        jpeg_range=(70.0, 95.0),
    ),
    # recorded as in the config; never applied because second_order_prob = 0
    second=BlurNoiseStage(
        blur_prob=0.2,
        kernel_sizes=(3, 5, 7),
        kernel_list=KERNELS6,
        kernel_prob=(0.60, 0.4, 0.0, 0.0, 0.0, 0.0),
        sinc_prob=0.0,
        blur_sigma=(0.2, 0.5),
        betag_range=(0.5, 0.8),
        betap_range=(1.0, 1.2),
        resize_prob=(0.3, 0.4, 0.3),
        resize_range=(0.8, 1.2),
        gaussian_noise_prob=0.5,
        noise_range=(1.0, 10.0),
        poisson_scale_range=(0.05, 0.2),
        gray_noise_prob=0.4,
        jpeg_range=None,
    ),
    second_order_prob=0.0,
    final=FinalStage(resize_sinc_first_prob=0.5, sinc_prob=0.2, sinc_sizes=(3, 5, 7, 9, 11, 13), jpeg_range=(80.0, 100.0)),
    round_output=True,
    gt_size=256,
    notes=("ImageNet-Test: SmallestMaxSize 256 + centre crop 256; final JPEG uses jpeg_range2 [80,100]",),
)

S3DIFF = RealESRGANPreset(
    name="s3diff",
    description="S3Diff training degradation (milder Real-ESRGAN second order, s3diff.md §8.2)",
    first=BlurNoiseStage(
        blur_prob=1.0,
        kernel_sizes=(7, 9, 11, 13, 15, 17, 19, 21),
        kernel_list=KERNELS6,
        kernel_prob=(0.45, 0.25, 0.12, 0.03, 0.12, 0.03),
        sinc_prob=0.1,
        blur_sigma=(0.2, 1.5),
        betag_range=(0.5, 2.0),
        betap_range=(1.0, 1.5),
        resize_prob=(0.2, 0.7, 0.1),
        resize_range=(0.3, 1.5),
        gaussian_noise_prob=0.5,
        noise_range=(1.0, 15.0),
        poisson_scale_range=(0.05, 2.0),
        gray_noise_prob=0.4,
        jpeg_range=(60.0, 95.0),
    ),
    second=BlurNoiseStage(
        blur_prob=0.5,
        kernel_sizes=(7, 9, 11),
        kernel_list=KERNELS6,
        kernel_prob=(0.45, 0.25, 0.12, 0.03, 0.12, 0.03),
        sinc_prob=0.1,
        blur_sigma=(0.2, 1.0),
        betag_range=(0.5, 4.0),
        betap_range=(1.0, 2.0),
        resize_prob=(0.3, 0.4, 0.3),
        resize_range=(0.6, 1.2),
        gaussian_noise_prob=0.5,
        noise_range=(1.0, 12.0),
        poisson_scale_range=(0.05, 1.0),
        gray_noise_prob=0.4,
        jpeg_range=None,
    ),
    second_order_prob=1.0,
    final=FinalStage(resize_sinc_first_prob=0.5, sinc_prob=0.8, sinc_sizes=(7, 9, 11, 13, 15, 17, 19, 21), jpeg_range=(60.0, 100.0)),
    round_output=False,
    no_degradation_prob=0.01,
    gt_size=512,
    notes=("LQ clamped, not rounded; 1% of samples use the clean (bicubic-downscaled) GT",),
)

BICUBIC = BicubicPreset(name="bicubic", description="MATLAB bicubic x1/scale with antialiasing (bicsr)")

FACEIR = FacePreset(
    name="faceir",
    description="GFPGAN-style blind-face degradation, output resized back to the input size",
    kernel_size=41,
    kernel_list=("iso", "aniso"),
    kernel_prob=(0.5, 0.5),
    blur_sigma=(0.1, 15.0),
    downsample_range=(0.8, 32.0),
    noise_range=(0.0, 20.0),
    jpeg_range=(30.0, 100.0),
    gray_prob=0.01,
)

PRESETS: dict[str, RealESRGANPreset | BicubicPreset | FacePreset] = {
    p.name: p for p in (RESSHIFT, RESSHIFT_TEST, S3DIFF, BICUBIC, FACEIR)
}
