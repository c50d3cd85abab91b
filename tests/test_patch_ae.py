"""The small PCA-initialised f4 autoencoder behind fewstep-small (resshift/patch_ae.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fewstep.resshift.patch_ae import PatchAutoencoder, build_autoencoder, sample_patches

pytestmark = pytest.mark.usefixtures("one_thread")


def _low_rank_patches(n: int, rank: int, seed: int = 0):
    """Patches that lie exactly in a `rank`-dimensional affine subspace, with distinct variances."""
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(48, rank, generator=g, dtype=torch.float64))
    std = torch.linspace(1.0, 0.1, rank, dtype=torch.float64)
    coef = torch.randn(n, rank, generator=g, dtype=torch.float64) * std
    mean = torch.rand(48, generator=g, dtype=torch.float64) * 0.4 - 0.2
    return (coef @ basis.T + mean).float(), basis, std


def test_fit_pca_whitens_and_inverts_exactly_on_its_subspace():
    patches, basis, std = _low_rank_patches(20_000, 8)
    ae = PatchAutoencoder(embed_dim=8, channels=(8, 8), blocks=(1, 1))
    stats = ae.fit_pca(patches)
    assert stats["explained"] == pytest.approx(1.0, abs=1e-9)
    # patches as images: (N, 48) -> (N, 3, 4, 4) through the inverse of pixel_unshuffle
    imgs = F.pixel_shuffle(patches[:, :, None, None], 4)
    z = ae.encode(imgs)
    assert z.shape == (20_000, 8, 1, 1)
    cov = torch.cov(z[:, :, 0, 0].T.double())
    torch.testing.assert_close(cov, torch.eye(8, dtype=torch.float64), atol=2e-3, rtol=0)  # whitened
    # the fresh decoder is exactly the linear inverse (its residual branch starts at zero)
    torch.testing.assert_close(ae.decode(z), imgs, atol=2e-5, rtol=0)
    # channel order is by variance: recovered standard deviations before whitening
    lin = ae.linear_decoder.weight[:, :, 0, 0].double()  # (48, C) = directions * std
    torch.testing.assert_close(lin.norm(dim=0), std, atol=1e-2, rtol=0)


def test_truncation_keeps_the_leading_components():
    patches, _, _ = _low_rank_patches(20_000, 12, seed=1)
    ae = PatchAutoencoder(embed_dim=4, channels=(8, 8), blocks=(1, 1))
    stats = ae.fit_pca(patches)
    var = torch.linspace(1.0, 0.1, 12) ** 2
    assert stats["explained"] == pytest.approx(float(var[:4].sum() / var.sum()), abs=2e-3)


def test_encoder_is_frozen_unless_asked():
    assert not any(p.requires_grad for p in PatchAutoencoder().encoder.parameters())
    assert all(p.requires_grad for p in PatchAutoencoder(train_encoder=True).encoder.parameters())
    assert all(p.requires_grad for p in PatchAutoencoder().decoder.parameters())


def test_build_autoencoder_dispatch():
    from fewstep.resshift.vq import VQModel

    ae = build_autoencoder({"kind": "patch", "embed_dim": 6, "channels": [16, 8], "blocks": [1, 1]})
    assert isinstance(ae, PatchAutoencoder) and ae.embed_dim == 6 and ae.downsample_factor == 4
    vq = build_autoencoder({"embed_dim": 3, "n_embed": 16, "ddconfig": dict(
        double_z=False, z_channels=3, resolution=32, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2],
        num_res_blocks=1, attn_resolutions=[], dropout=0.0)})
    assert isinstance(vq, VQModel)


def test_sample_patches_grid_aligned(tmp_path):
    """Patches come from the 4-pixel grid of each image, evenly over the images."""
    import numpy as np
    from PIL import Image

    a = np.zeros((8, 8, 3), np.uint8)
    a[:4, :4] = 255  # one white 4x4 cell on the grid
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(tmp_path / "b.png")
    p = sample_patches(tmp_path, count=200, seed=0)
    assert p.shape == (200, 48)
    # every patch is uniform (all white, all black or all mid-grey): none straddles two grid cells
    assert (p.max(1).values == p.min(1).values).all()
    assert set(p[:, 0].tolist()) <= {1.0, -1.0, float(torch.tensor(128.0) / 127.5 - 1)}
    assert (p[:100] == 1.0).all(1).any() and (p[:100] == -1.0).all(1).any()
