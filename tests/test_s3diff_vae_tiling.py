"""Tiled VAE (exact GroupNorm statistics, cropped halos) against the untiled diffusers modules."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")

# the SD VAE layout (4 blocks, 2 resnets each, 3 up/downsamplers) with few channels
SMALL_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=4,
                 block_out_channels=(8, 16, 16, 16), sample_size=64,
                 down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)


@pytest.fixture(scope="module")
def vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    v = AutoencoderKL(**SMALL_VAE).eval()
    with torch.no_grad():
        for m in v.modules():
            if isinstance(m, torch.nn.GroupNorm):  # non-trivial affine, so a wrong mean/var shows
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return v


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def _latent(shape, seed=0):
    """Non-stationary input: a strong ramp makes every tile's own statistics differ from the image's."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=g)
    ramp = torch.linspace(-3, 3, shape[-1])
    return z + ramp + torch.linspace(0, 2, shape[-2])[:, None]


def test_plan_is_balanced_aligned_and_covers():
    from fewstep.s3diff.vae_tiling import _plan

    assert _plan(256, 224) == [(0, 128), (128, 256)]  # not 224 + 32: the largest tile sets the peak
    assert _plan(100, 224) == [(0, 100)]
    for size, tile, align in [(2048, 1024, 8), (200, 64, 8), (1000, 192, 8), (13, 4, 1)]:
        cores = _plan(size, tile, align)
        assert cores[0][0] == 0 and cores[-1][1] == size
        assert all(a[1] == b[0] for a, b in zip(cores, cores[1:]))
        assert all(s % align == 0 and e - s <= tile for s, e in cores)
        assert len(cores) == -(-size // tile)


def test_margins_of_the_sd_vae_layout():
    """Receptive radius of the tiled parts, counted by hand for the SD VAE (3x3 convs):
    decoder (latent px): conv_out 1 -> +6 convs = 7 -> up ceil((7+1)/2) = 4 -> +6 = 10 ->
    ceil(11/2) = 6 -> +6 = 12 -> ceil(13/2) = 7 -> +6 = 13.
    encoder (input px): 4 -> down 2*4+2 = 10 -> +4 = 14 -> 30 -> 34 -> 70 -> 74 -> +conv_in = 75."""
    from diffusers import AutoencoderKL

    from fewstep.s3diff.vae_tiling import _decoder_margins, _encoder_margins

    v = AutoencoderKL(**SMALL_VAE)
    assert _decoder_margins(v.decoder) == (13, [7, 6, 4, None])
    assert _encoder_margins(v.encoder) == (75, [70, 30, 10, None])


@pytest.mark.parametrize("tile,shape", [(8, (1, 4, 16, 24)), (6, (2, 4, 13, 21)), (224, (1, 4, 12, 10))])
def test_tiled_decoder_matches_untiled(vae, tile, shape):
    from fewstep.s3diff.vae_tiling import TiledDecoder

    z = _latent(shape)
    with torch.no_grad():
        ref = vae.decoder(z)
        out = TiledDecoder(vae.decoder, tile=tile)(z)
    assert out.shape == ref.shape == (shape[0], 3, shape[2] * 8, shape[3] * 8)
    assert _rel(out, ref) <= 1e-5


def test_decoder_halo_is_the_receptive_field(vae):
    """halo 13 (the computed margin) is exact, half of it is visibly wrong (the check has teeth;
    the error fades within a pixel or two of the bound, so it cannot pin the bound itself)."""
    from fewstep.s3diff.vae_tiling import TiledDecoder

    z = _latent((1, 4, 32, 32), seed=1)
    with torch.no_grad():
        ref = vae.decoder(z)
        exact = TiledDecoder(vae.decoder, tile=16, halo=13)(z)
        short = TiledDecoder(vae.decoder, tile=16, halo=6)(z)
    assert _rel(exact, ref) <= 1e-5
    assert _rel(short, ref) > 1e-3


def test_whole_image_statistics_not_per_tile(vae):
    """With per-tile GroupNorm statistics (what diffusers' tiling does) the ramp image shifts colour
    by far more than rounding; ours matches the untiled decoder."""
    from fewstep.s3diff.vae_tiling import TiledDecoder

    z = _latent((1, 4, 40, 40), seed=2)
    with torch.no_grad():
        ref = vae.decoder(z)
        ours = TiledDecoder(vae.decoder, tile=20, halo=14)(z)
        # per-tile statistics: decode each 20x20 quarter with the same halo on its own
        naive = torch.empty_like(ref)
        for y in (0, 20):
            for x in (0, 20):
                y0, x0 = max(0, y - 14), max(0, x - 14)
                part = vae.decoder(z[:, :, y0:y + 34, x0:x + 34])
                naive[:, :, 8 * y:8 * y + 160, 8 * x:8 * x + 160] = \
                    part[:, :, 8 * (y - y0):8 * (y - y0) + 160, 8 * (x - x0):8 * (x - x0) + 160]
    assert _rel(ours, ref) <= 1e-5
    assert _rel(naive, ref) > 1e-2


def test_decoder_tiles_are_cropped_at_full_resolution(vae):
    """The halo (16 latent px = 128 px at full resolution) must not reach the full-resolution
    stages: conv_out sees the core plus its own one-pixel radius (plus what the last upsampler
    rounding leaves), not core + 2 * 128."""
    from fewstep.s3diff.vae_tiling import TiledDecoder

    shapes = []
    hook = vae.decoder.conv_out.register_forward_hook(lambda m, i, o: shapes.append(tuple(i[0].shape[-2:])))
    try:
        with torch.no_grad():
            TiledDecoder(vae.decoder, tile=8, halo=16)(_latent((1, 4, 24, 24)))
    finally:
        hook.remove()
    assert len(shapes) == 9
    # core 64 px; the margin before the last upsampler is 4 latent-stage px -> 8 px, each side
    assert max(max(s) for s in shapes) <= 64 + 2 * 8
    assert shapes[4] == (64 + 16, 64 + 16)  # the middle tile has neighbours on all sides


@pytest.mark.parametrize("tile,hw", [(64, (128, 192)), (64, (200, 136))])
def test_tiled_encoder_matches_untiled(vae, tile, hw):
    from fewstep.s3diff.vae_tiling import TiledEncoder

    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, *hw, generator=g) * 2 - 1 + torch.linspace(-0.5, 0.5, hw[1])
    with torch.no_grad():
        ref = vae.encoder(x)
        out = TiledEncoder(vae.encoder, tile=tile)(x)
    assert out.shape == ref.shape == (2, 8, hw[0] // 8, hw[1] // 8)
    assert _rel(out, ref) <= 1e-5


def test_tiled_encoder_short_halo_is_wrong(vae):
    from fewstep.s3diff.vae_tiling import TiledEncoder

    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.no_grad():
        ref = vae.encoder(x)
        short = TiledEncoder(vae.encoder, tile=64, halo=16)(x)
    assert _rel(short, ref) > 1e-4


def test_bf16_tiles_match_bf16_untiled(vae):
    """The bf16 path (fp32 statistics and affine, bf16 activations) runs and is as accurate as the
    untiled bf16 decoder."""
    import copy

    from fewstep.s3diff.vae_tiling import TiledDecoder

    dec = copy.deepcopy(vae.decoder).to(torch.bfloat16)
    z = _latent((1, 4, 16, 16), seed=5).to(torch.bfloat16)
    with torch.no_grad():
        ref = vae.decoder(z.float())
        bf = dec(z).float()
        tiled = TiledDecoder(dec, tile=8)(z)
    assert tiled.dtype == torch.bfloat16
    tiled = tiled.float()
    # the tiled bf16 decode is as close to the fp32 result as the untiled bf16 decode is
    assert (tiled - ref).abs().mean() <= 1.5 * (bf - ref).abs().mean()
