"""ResShift against the official code's numbers (tests/fixtures/resshift, see its README)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fewstep.errors import CheckpointError
from fewstep.resshift import ResShiftChain, ResShiftPipeline, SwinUNet, VQModel, load_unet, load_vq
from fewstep.resshift.checkpoint import load_into, read_state_dict
from fewstep.resshift.unet import official_shift_mask

FIX = Path(__file__).parent / "fixtures" / "resshift"


def _cfg(name: str) -> dict:
    return json.loads((FIX / name).read_text())


@pytest.fixture(scope="module")
def unet():
    return load_unet(FIX / "unet_tiny.pth", _cfg("unet_tiny_config.json")["constructor_kwargs"])


@pytest.fixture(scope="module")
def vq():
    return load_vq(FIX / "vq_tiny.pth", _cfg("vq_tiny_config.json")["constructor_kwargs"])


def _chain(params: dict) -> ResShiftChain:
    return ResShiftChain(steps=params["steps"], min_noise_level=params["min_noise_level"], kappa=params["kappa"],
                         etas_end=params["etas_end"], power=params["schedule_kwargs"]["power"])


# ---------------------------------------------------------------------------------- schedules
@pytest.mark.parametrize("name", ["v1_v2_realsr", "v3_journal"])
def test_schedule_tables_match_official(name):
    entry = _cfg("schedules.json")["schedules"][name]
    chain = _chain(entry["params"])
    ref = entry["float64"]
    for key in ("sqrt_etas", "etas", "etas_prev", "alpha", "posterior_variance", "posterior_variance_clipped",
                "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
                "kappa_sqrt_etas", "input_std"):
        np.testing.assert_allclose(getattr(chain, key), ref[key], rtol=1e-12, atol=0, err_msg=key)
    rt = entry["float32_runtime"]
    t = torch.arange(chain.steps)
    x = torch.ones(chain.steps, 1, 1, 1)
    np.testing.assert_allclose((1 / chain.scale_input(x, t)).flatten().numpy(), rt["input_std"], atol=1e-6)
    np.testing.assert_allclose(chain.scale_input(x, t).flatten().numpy(), rt["input_scale_by_division"], atol=1e-6)
    _, _, logvar = chain.posterior_mean_variance(x, x, t)
    np.testing.assert_allclose(torch.exp(0.5 * logvar).flatten().numpy(), rt["posterior_std"], atol=1e-6)


def test_journal_schedule_uses_new_s1_formula():
    chain = ResShiftChain(steps=4, min_noise_level=0.2, kappa=2.0)
    np.testing.assert_allclose(chain.sqrt_etas, [0.1, 0.520096, 0.761382, 0.99], atol=1e-6)


# ---------------------------------------------------------------------------------- networks
def test_unet_matches_official_square_and_nonsquare(unet):
    io = load_file(str(FIX / "unet_tiny_io.safetensors"))
    with torch.no_grad():
        out = unet(io["x"], io["timesteps"], lq=io["lq"])
        out_ns = unet(io["x_nonsq"], io["timesteps_nonsq"], lq=io["lq_nonsq"])
    assert (out - io["out"]).abs().max() <= 1e-4
    assert (out_ns - io["out_nonsq"]).abs().max() <= 1e-4


def test_closed_form_shift_mask_equals_official_stored_buffers():
    """The attn_mask buffers in the official file were computed by the official calculate_mask."""
    sd = read_state_dict(FIX / "unet_tiny.pth")
    masks = {k: v for k, v in sd.items() if k.endswith("attn_mask")}
    assert len(masks) == 6
    for key, stored in masks.items():
        res = int(round((stored.shape[0]) ** 0.5)) * 8
        assert torch.equal(official_shift_mask(res, res, 8, 4), stored), key


def test_vq_encode_decode_match_official(vq):
    io = load_file(str(FIX / "vq_tiny_io.safetensors"))
    with torch.no_grad():
        assert (vq.encode(io["image"]) - io["latent"]).abs().max() <= 1e-4
        assert torch.equal(vq.quantize.codes(io["latent"]), io["latent_codes"])
        assert torch.equal(vq.quantize(io["latent"])[0], io["latent_quantized"])
        assert (vq.decode(io["latent"]) - io["decoded"]).abs().max() <= 2e-4
        assert (vq.decode(io["latent"], force_not_quantize=True) - io["decoded_no_quantize"]).abs().max() <= 2e-4
        assert torch.equal(vq.quantize.codes(io["rand_latent"]), io["rand_latent_codes"])
        assert (vq.decode(io["rand_latent"]) - io["rand_decoded"]).abs().max() <= 2e-4


def test_vq_codebook_search_is_chunked_consistently(vq):
    z = torch.randn(1, 3, 40, 24, generator=torch.Generator().manual_seed(0))
    assert torch.equal(vq.quantize.codes(z, chunk=7), vq.quantize.codes(z))


# ---------------------------------------------------------------------------------- sampler
@pytest.mark.parametrize("version", ["v3", "v1"])
def test_sampler_end_to_end_matches_official(unet, vq, version):
    cfg = _cfg(f"sampler_{version}_config.json")
    io = load_file(str(FIX / f"sampler_{version}_io.safetensors"))
    pipe = ResShiftPipeline(unet, vq, _chain(cfg["diffusion_params"]), scale=4)
    x0s = []
    noise = [io["eps0"], *io["step_noises"]]
    out = pipe.sample(io["lr"], noise=noise, callback=lambda k, t, z, x0: x0s.append(x0))
    if "pred_x0" in io:
        for k, x0 in enumerate(x0s):
            assert (x0 - io["pred_x0"][k]).abs().max() <= 1e-4, k
    assert (x0s[-1] - io["z_final"]).abs().max() <= 1e-4
    assert torch.equal(vq.quantize.codes(x0s[-1]), io["final_codes"])
    assert (out - io["decoded"]).abs().max() <= 2e-4
    assert (out.clamp(-1, 1) - io["decoded_clamped"]).abs().max() <= 2e-4


def test_sampler_pads_and_crops_like_official(unet, vq):
    pipe = ResShiftPipeline(unet, vq, ResShiftChain(steps=4), scale=4)
    lr = torch.rand(1, 3, 40, 70) * 2 - 1
    out = pipe.sample(lr, seed=3)
    assert out.shape == (1, 3, 160, 280)
    # the padded region is reflect-padded content: sampling the explicitly padded LR gives the
    # same pixels in the kept area
    padded = torch.nn.functional.pad(lr, (0, 58, 0, 24), mode="reflect")
    out_p = pipe.sample(padded, seed=3)
    assert torch.allclose(out, out_p[..., :160, :280], atol=1e-5)


def test_seeds_make_samples_independent_of_batch(unet, vq):
    pipe = ResShiftPipeline(unet, vq, ResShiftChain(steps=4), scale=4)
    lr = torch.rand(2, 3, 64, 64) * 2 - 1
    # compare the final latents: the decoded images pass through the codebook search, where a
    # float-rounding difference between batch sizes (oneDNN picks other kernels) can flip a code
    latents = {}

    def keep(name):
        return lambda k, t, z, x0: latents.__setitem__(name, z)

    both = pipe.sample(lr, seed=[11, 12], callback=keep("both"))
    one = pipe.sample(lr[1:], seed=12, callback=keep("one"))
    torch.testing.assert_close(latents["both"][1:], latents["one"], atol=1e-4, rtol=0)
    assert (both[1:] - one).abs().mean() < 1e-3
    pipe.sample(lr[1:], seed=13, callback=keep("other"))
    assert not torch.allclose(latents["other"], latents["one"], atol=1e-3)


# ---------------------------------------------------------------------------------- chain math
def test_jumps_compose_and_respacing_keeps_network_timesteps():
    chain = ResShiftChain(steps=15, min_noise_level=0.04)
    x_t, x0 = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    # jump t -> s given x0 then s -> r equals t -> r in mean and variance
    a1, b1, v1 = chain.jump_coefficients(10, 6)
    a2, b2, v2 = chain.jump_coefficients(6, 2)
    a, b, v = chain.jump_coefficients(10, 2)
    assert np.isclose(a1 * a2, a) and np.isclose(a2 * b1 + b2, b) and np.isclose(a2 ** 2 * v1 + v2, v)
    # one-step jump equals the posterior
    mean, var, _ = chain.posterior_mean_variance(x_t, x0, torch.tensor([7]))
    jm, jv = chain.jump(x_t, x0, 7, 6)
    assert torch.allclose(mean, jm, atol=1e-6) and np.isclose(var.item(), jv, rtol=1e-6)
    sub = chain.respaced([0, 7, 14])
    assert sub.steps == 3 and list(sub.timestep_map) == [0, 7, 14]
    np.testing.assert_allclose(sub.sqrt_etas, chain.sqrt_etas[[0, 7, 14]])
    assert sub.model_timesteps(torch.tensor([2, 1])).tolist() == [14, 7]


# ---------------------------------------------------------------------------------- manifests & loader
@pytest.mark.parametrize("manifest", ["unet_keys_realsr.txt", "unet_keys_realsr_x2.txt", "unet_keys_inpaint.txt",
                                      "unet_keys_faceir.txt", "vq_f4_keys.txt", "vq_f8_face_keys.txt"])
def test_full_size_architectures_have_official_keys_and_shapes(manifest):
    summary = _cfg("keys/keys_summary.json")["files"][manifest]
    with torch.device("meta"):
        model = (VQModel if manifest.startswith("vq") else SwinUNet)(**summary["constructor_kwargs"])
    ours = [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()]
    ref = []
    for line in (FIX / "keys" / manifest).read_text().strip().splitlines():
        k, shape, dt = line.split("\t")
        ref.append((k, json.loads(shape), dt))
    assert ours == ref
    assert sum(p.numel() for p in model.parameters()) == summary["parameters"]


def test_loader_accepts_every_released_layout(tmp_path):
    cfg = _cfg("unet_tiny_config.json")["constructor_kwargs"]
    sd = read_state_dict(FIX / "unet_tiny.pth")  # {'state_dict': {'module.' + k}} unwrapped
    ref = SwinUNet(**cfg)
    load_into(ref, sd)
    x, t = torch.randn(1, 3, 64, 64), torch.tensor([1])
    with torch.no_grad():
        expected = ref(x, t, lq=x)
    variants = {
        "bare.pth": dict(sd),
        "compiled.pth": {"module._orig_mod." + k: v for k, v in sd.items()},
        "no_buffers.pth": {k: v for k, v in sd.items() if not k.endswith(("attn_mask", "relative_position_index"))},
        "wrapped.pth": {"state_dict": {"_orig_mod." + k: v for k, v in sd.items()}},
    }
    for name, content in variants.items():
        torch.save(content, tmp_path / name)
        m = load_unet(tmp_path / name, cfg)
        with torch.no_grad():
            assert torch.equal(m(x, t, lq=x), expected), name


def test_loader_names_missing_unexpected_and_mismatched_keys(tmp_path):
    cfg = _cfg("unet_tiny_config.json")["constructor_kwargs"]
    sd = read_state_dict(FIX / "unet_tiny.pth")
    missing = dict(sd)
    del missing["out.2.weight"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing 1 key.*out\.2\.weight"):
        load_unet(tmp_path / "missing.pth", cfg)
    extra = dict(sd, **{"extra_head.weight": torch.zeros(3)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"unexpected 1 key.*extra_head\.weight"):
        load_unet(tmp_path / "extra.pth", cfg)
    bad = dict(sd, **{"out.2.bias": torch.zeros(4)})
    torch.save(bad, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match=r"shape mismatch for 'out\.2\.bias'"):
        load_unet(tmp_path / "shape.pth", cfg)


def test_loader_refuses_pickled_code(tmp_path):
    from fewstep.errors import FewstepError

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": Path("x")}, path)  # a non-tensor object
    with pytest.raises(FewstepError, match="evil.pth: cannot read checkpoint"):
        read_state_dict(path)



def test_vq_attention_feeds_sdpa_a_layout_its_memory_efficient_kernels_accept(vq, monkeypatch):
    """A transposed (non-contiguous) q/k/v makes CPU SDPA fall back to materialising N x N scores."""
    import fewstep.resshift.vq as vq_module

    seen = []
    real = vq_module.F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        seen.append(all(t.is_contiguous() for t in (q, k, v)))
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(vq_module.F, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        vq.decode(torch.randn(1, 3, 8, 8))
    assert seen and all(seen)


def test_residual_prediction_passes_the_lr_latent_through():
    """prediction="residual": x0 = y + output. A network that outputs zeros therefore samples
    exactly the LR latent y (the last step returns x0), whatever the noise; respacing keeps it."""
    from fewstep.resshift.patch_ae import PatchAutoencoder

    chain = ResShiftChain(steps=4, prediction="residual")
    assert chain.respaced([0, 3]).prediction == "residual" and ResShiftChain().prediction == "x0"
    y, out = torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(chain.x0_from_output(out, y), y + out)
    torch.testing.assert_close(ResShiftChain().x0_from_output(out, y), out)
    with pytest.raises(ValueError, match="prediction"):
        ResShiftChain(prediction="eps")

    class Zeros(torch.nn.Module):
        lq_size = 16

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, t, lq=None, mask=None):
            return torch.zeros_like(x) * self.w

    ae = PatchAutoencoder(embed_dim=8, channels=(8, 8), blocks=(1, 1))
    torch.nn.init.normal_(ae.encoder.weight, std=0.2)
    torch.nn.init.normal_(ae.linear_decoder.weight, std=0.2)
    pipe = ResShiftPipeline(Zeros(), ae, chain, scale=4)
    lr = torch.rand(1, 3, 16, 16) * 2 - 1
    up = torch.nn.functional.interpolate(lr, scale_factor=4, mode="bicubic")
    expect = ae.decode(ae.encode(up))
    for seed in (0, 1):
        torch.testing.assert_close(pipe.sample(lr, seed=seed), expect, atol=1e-5, rtol=0)
    # the same network read as an x0 predictor returns the decoded zero latent instead
    x0_pipe = ResShiftPipeline(Zeros(), ae, ResShiftChain(steps=4), scale=4)
    torch.testing.assert_close(x0_pipe.sample(lr, seed=0), ae.decode(torch.zeros_like(ae.encode(up))), atol=1e-5, rtol=0)


def test_chain_owns_respacing_and_the_denoiser():
    """`with_steps` spreads the kept indices evenly with both ends (the official respacing); the
    denoiser feeds the network the scaled input and the *trained* timestep of each kept index."""
    from fewstep.errors import FewstepError

    chain = ResShiftChain(steps=15, min_noise_level=0.04, kappa=2.0, etas_end=0.99, power=0.3)
    assert chain.with_steps(None) is chain and chain.with_steps(15) is chain
    four = chain.with_steps(4)
    assert four.steps == 4 and four.timestep_map.tolist() == [0, 5, 9, 14]
    np.testing.assert_array_equal(four.sqrt_etas, chain.sqrt_etas[[0, 5, 9, 14]])
    assert chain.with_steps(1).timestep_map.tolist() == [0]
    with pytest.raises(FewstepError, match="m: steps must be between 1 and 15, got 16"):
        chain.with_steps(16, name="m")

    seen = {}

    def net(x, t, lq=None):
        seen["x"], seen["t"], seen["lq"] = x, t, lq
        return torch.full_like(x, 0.5)

    x, y, lq = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 1, 1)
    t = torch.tensor([3, 1])
    x0 = four.denoiser(net, y, lq)(x, t)
    assert seen["t"].tolist() == [14, 5] and seen["lq"] is lq
    std = np.sqrt(four.kappa ** 2 * four.etas[[3, 1]] + 1).astype(np.float32)
    torch.testing.assert_close(seen["x"], x / torch.from_numpy(std)[:, None, None, None])
    torch.testing.assert_close(x0, torch.full_like(x, 0.5))
    residual = ResShiftChain(steps=4, prediction="residual")
    torch.testing.assert_close(residual.denoiser(net, y, lq)(x, torch.tensor([0, 0])), y + 0.5)
