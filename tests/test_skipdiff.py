"""SkipDiff chain / sampler / policy tests (issue 6 acceptance). Reference numbers are the spec's
tables (skipdiff.md §A3, computed from the released schedule), not outputs of our code."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fewstep.errors import FewstepError
from fewstep.skipdiff import (ActorCritic, BanditPolicy, CosineChain, FixedPolicy, OraclePolicy, PPOPolicy,
                              ResShiftAdapter, SkipDiffSampler, ppo_update)


pytestmark = pytest.mark.usefixtures("one_thread")


class TinyDenoiser(nn.Module):
    """A small random conv ε-predictor; counts how many samples it evaluated."""

    scale = 4

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(6, 3, 3, padding=1)
        self.emb = nn.Linear(1, 3)
        self.rows = 0

    def forward(self, x, sqrt_abar):
        self.rows += x.shape[0]
        return 0.3 * torch.tanh(self.conv(x) + self.emb(sqrt_abar[:, None])[:, :, None, None]) + 0.5 * x[:, 3:]


def _lr(b=2, s=6, seed=1):
    return torch.rand(b, 3, s, s, generator=torch.Generator().manual_seed(seed))


# --- schedule -----------------------------------------------------------------------------------
def test_ten_level_grid_is_every_tenth_level_below_clipped_top():
    a100, a10 = CosineChain(100).alphas_cumprod, CosineChain(10).alphas_cumprod
    assert a100.dtype == np.float64 and a100.shape == (100,) and a10.shape == (10,)
    np.testing.assert_allclose(a10[:9], a100[9::10][:9], rtol=1e-12, atol=0)
    # the top level differs only through the 0.999 β clip (spec §A3: 2.41e-5 vs 2.43e-7)
    assert a10[9] == pytest.approx(2.41e-5, rel=0.01)
    assert a100[99] == pytest.approx(2.43e-7, rel=0.01)


def test_spec_sigma_tables():
    c10, c100 = CosineChain(10), CosineChain(100)
    sqrt_abar10 = [0.0049, 0.1552, 0.3067, 0.4507, 0.5838, 0.7027, 0.8047, 0.8871, 0.9480, 0.9859]
    np.testing.assert_allclose(c10.sqrt_alphas_cumprod[::-1], sqrt_abar10, atol=6e-5)
    sig100 = [0.1671, 0.1516, 0.1361, 0.1206, 0.1050, 0.0894, 0.0737, 0.0579, 0.0418, 0.0251]
    np.testing.assert_allclose([c100.sigma(t) for t in range(9, -1, -1)], sig100, atol=6e-5)


def test_coarse_stage_ends_at_sigma_0_1671():
    s = SkipDiffSampler(CosineChain(100), coarse=10, fine=10)
    assert s.coarse_nfe == 9 and s.fine_idx == list(range(9, -1, -1))
    assert s.landing_sigma == pytest.approx(0.1671, abs=5e-5)
    assert s.coarse_chain.sigma(0) == pytest.approx(0.1671, abs=5e-5)
    with pytest.raises(FewstepError, match="coarse"):
        SkipDiffSampler(CosineChain(100), coarse=7, fine=10)


def test_single_ddpm_step_matches_textbook_posterior():
    c = CosineChain(100)
    t = 37
    a, b, var = (v.item() for v in c.moments(t, t - 1, 1))
    ab, ab_prev = c.alphas_cumprod[t], c.alphas_cumprod[t - 1]
    beta = c.betas[t]
    assert b == pytest.approx(beta * np.sqrt(ab_prev) / (1 - ab), rel=1e-12)
    assert a == pytest.approx((1 - ab_prev) * np.sqrt(1 - beta) / (1 - ab), rel=1e-12)
    assert var == pytest.approx(beta * (1 - ab_prev) / (1 - ab), rel=1e-12)
    assert [v.item() for v in c.moments(0, -1, 1)] == [0.0, 1.0, 0.0]


def _compose(chain, t, u, s):
    a1, b1, v1 = (x.item() for x in chain.moments(t, u, 1))
    a2, b2, v2 = (x.item() for x in chain.moments(u, s, 1))
    a, b, v = (x.item() for x in chain.moments(t, s, 1))
    # x_s = a2 (a1 x_t + b1 x0 + √v1 ε1) + b2 x0 + √v2 ε2
    return (a2 * a1, a, a2 * b1 + b2, b, a2 * a2 * v1 + v2, v)


@pytest.mark.parametrize("t,u,s", [(9, 5, 2), (60, 31, 4), (99, 50, 0)])
def test_cosine_jump_posteriors_compose(t, u, s):
    got_a, a, got_b, b, got_v, v = _compose(CosineChain(100), t, u, s)
    assert got_a == pytest.approx(a, rel=1e-10) and got_b == pytest.approx(b, rel=1e-10)
    assert got_v == pytest.approx(v, rel=1e-10)


def test_resshift_jump_posteriors_compose():
    from fewstep.resshift.chain import ResShiftChain

    ad = ResShiftAdapter(ResShiftChain(steps=15, min_noise_level=0.04, kappa=2.0, etas_end=0.99, power=0.3))
    # spec §C2: √η_t of ResShift v1 and the noise std κ√η at the top
    assert ad.sigma(14) == pytest.approx(1.980, abs=1e-3) and ad.sigma(0) == pytest.approx(0.040, abs=1e-3)
    for t, u, s in [(14, 8, 3), (10, 9, 0), (6, 2, -1)]:
        got_a, a, got_b, b, got_v, v = _compose(ad, t, u, s)
        assert got_a == pytest.approx(a, rel=1e-10) and got_b == pytest.approx(b, rel=1e-10)
        assert got_v == pytest.approx(v, rel=1e-10, abs=1e-14)
    # a single-index jump is the ordinary ResShift posterior
    rc = ad.rc
    a, b, v = (x.item() for x in ad.moments(7, 6, 1))
    assert (a, b, v) == pytest.approx((rc.posterior_mean_coef1[7], rc.posterior_mean_coef2[7], rc.posterior_variance[7]))


# --- sampler -------------------------------------------------------------------------------------
@pytest.mark.parametrize("m", [1, 4, 10])
def test_nfe_is_nine_plus_m_and_network_sees_only_denoisers(m):
    model = TinyDenoiser()
    s = SkipDiffSampler(CosineChain(100), coarse=10, fine=10, mode="reset")
    out, nfe = s(model, _lr(b=3), policy=FixedPolicy(m), seed=0)
    assert out.shape == (3, 3, 24, 24) and 0 <= out.min() and out.max() <= 1
    assert nfe.tolist() == [9 + m] * 3
    assert model.rows == 3 * (9 + m)


def test_per_sample_actions_in_a_batch():
    model = TinyDenoiser()
    s = SkipDiffSampler(CosineChain(100), coarse=10, fine=10)
    lr = _lr(b=3)
    ms = torch.tensor([2, 10, 5])
    out, nfe = s(model, lr, policy=FixedPolicy(ms), seed=[3, 4, 5])
    assert nfe.tolist() == [11, 19, 14] and model.rows == 11 + 19 + 14
    for i in range(3):  # each sample equals that image alone with its seed and its m
        alone, n1 = s(TinyDenoiser(), lr[i:i + 1], policy=FixedPolicy(int(ms[i])), seed=3 + i)
        torch.testing.assert_close(out[i:i + 1], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("m", [1, 3, 7, 10])
def test_reset_and_hold_identical_for_skip_first_policies(m):
    lr = _lr()
    r, nr = SkipDiffSampler(CosineChain(100), mode="reset")(TinyDenoiser(), lr, policy=FixedPolicy(m), seed=7)
    h, nh = SkipDiffSampler(CosineChain(100), mode="hold")(TinyDenoiser(), lr, policy=FixedPolicy(m), seed=7)
    assert torch.equal(r, h) and torch.equal(nr, nh)


class _Alternate:
    """denoise, skip, denoise, skip ... : a policy that is not skip-first."""

    def act(self, obs, state):
        return torch.full((obs["x"].shape[0],), obs["k"] % 2), state


def test_modes_differ_when_policy_is_not_skip_first():
    lr, outs = _lr(), {}
    for mode in ("reset", "hold", "jump"):
        outs[mode], nfe = SkipDiffSampler(CosineChain(100), mode=mode)(TinyDenoiser(), lr, policy=_Alternate(), seed=0)
        assert nfe.tolist() == [9 + 6] * 2  # k = 0,2,4,6,8 denoise + the forced last step
    assert not torch.allclose(outs["reset"], outs["hold"]) and not torch.allclose(outs["hold"], outs["jump"])


def test_jump_mode_no_skip_equals_full_fine_chain():
    lr = _lr()
    r, _ = SkipDiffSampler(CosineChain(100), mode="reset")(TinyDenoiser(), lr, policy=FixedPolicy(10), seed=2)
    j, _ = SkipDiffSampler(CosineChain(100), mode="jump")(TinyDenoiser(), lr, policy=FixedPolicy(10), seed=2)
    assert torch.equal(r, j)


def test_deterministic_under_seed_and_seed_matters():
    lr, s = _lr(), SkipDiffSampler(CosineChain(100), mode="reset")
    a, _ = s(TinyDenoiser(), lr, policy=FixedPolicy(4), seed=11)
    b, _ = s(TinyDenoiser(), lr, policy=FixedPolicy(4), seed=11)
    c, _ = s(TinyDenoiser(), lr, policy=FixedPolicy(4), seed=12)
    assert torch.equal(a, b) and (a - c).abs().max() > 1e-3


def test_oracle_picks_best_enumerated_completion():
    s, lr = SkipDiffSampler(CosineChain(100)), _lr()
    target = torch.full((2, 3, 24, 24), 0.5)

    def reward(img, hr):
        return -(img - hr).pow(2).flatten(1).mean(1)

    out, nfe, info = s(TinyDenoiser(), lr, policy=OraclePolicy(reward), seed=0, hr=target, return_info=True)
    imgs = info["enumeration"]["images"]
    errs = torch.stack([(imgs[j] - target).pow(2).flatten(1).mean(1) for j in range(10)])
    assert info["m"].tolist() == (errs.argmin(0) + 1).tolist()
    assert nfe.tolist() == (9 + errs.argmin(0) + 1).tolist()
    for i in range(2):  # enumerated completion m equals running FixedPolicy(m) directly
        m = int(info["m"][i])
        direct, _ = s(TinyDenoiser(), lr[i:i + 1], policy=FixedPolicy(m), seed=0)
        torch.testing.assert_close(out[i:i + 1], direct, atol=1e-5, rtol=0)


def test_plain_sampling_step_counts():
    s = SkipDiffSampler(CosineChain(100))
    model = TinyDenoiser()
    out, nfe = s.plain(model, _lr(b=1), 10, seed=0)
    assert nfe.tolist() == [10] and model.rows == 10 and out.shape == (1, 3, 24, 24)


def test_bad_mode_and_m_raise():
    with pytest.raises(FewstepError, match="mode"):
        SkipDiffSampler(CosineChain(100), mode="teleport")
    with pytest.raises(FewstepError, match="m must be"):
        SkipDiffSampler(CosineChain(100))(TinyDenoiser(), _lr(), policy=FixedPolicy(11))


# --- policies -----------------------------------------------------------------------------------
def test_ppo_act_and_evaluate_log_probs_agree():
    torch.manual_seed(0)
    net = ActorCritic(obs_size=64, hidden=96)
    pol = PPOPolicy(net, sample=True, seed=5)
    s = SkipDiffSampler(CosineChain(100))
    out, nfe, res = s(TinyDenoiser(), _lr(b=3, s=16), policy=pol, seed=0, return_info=True)
    tr = pol.trajectory
    assert len(tr["actions"]) == 9 and tr["obs"][0].shape == (3, 3, 64, 64)
    acts = torch.stack(tr["actions"])
    assert torch.equal(acts.T, res.actions[:, :9])
    # honest NFE: coarse 9 + one per denoise decision + the forced last step
    assert nfe.tolist() == (9 + (acts == 0).sum(0) + 1).tolist()
    lp, v, ent = net.evaluate(torch.stack(tr["obs"]), acts)
    torch.testing.assert_close(lp, torch.stack(tr["logp"]), atol=1e-5, rtol=0)
    torch.testing.assert_close(v, torch.stack(tr["values"]), atol=1e-5, rtol=0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-4)
    stats = ppo_update(net, opt, tr, reward=torch.tensor([1.0, 0.2, 0.5]))
    assert stats["ratio_dev"] < 1e-5  # K=1: the ratio is exactly 1 at the single update


def test_ppo_released_architecture_sizes():
    net = ActorCritic()  # 128² observation, GRU(1536)
    assert net.gru.input_size == 1536 and net.gru.hidden_size == 1536
    assert net.actor.out_features == 2 and net.critic.out_features == 1
    a, lp, v, h, o = net.act(torch.zeros(2, 3, 40, 40), net.init_hidden(2), greedy=True)
    assert o.shape == (2, 3, 128, 128) and h.shape == (2, 1536)


def test_ppo_learns_a_trivial_bandit():
    """A reward that pays only for "skip at decision 0" must raise that action's probability."""
    torch.manual_seed(0)
    net = ActorCritic(obs_size=32, hidden=64)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    x = torch.zeros(8, 3, 32, 32)
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        h = net.init_hidden(8)
        a, lp, v, h, o = net.act(x, h, gen)
        tr = {"obs": [o], "actions": [a], "logp": [lp], "values": [v]}
        ppo_update(net, opt, tr, reward=(a == 1).float())
    p_skip = net._core(net.observe(x), net.init_hidden(8))[0].exp()[:, 1].mean()
    assert p_skip > 0.9


def test_bandit_fit_recovers_feature_dependent_best_m():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(200, 8, generator=g)
    best = torch.where(feats[:, 2] > 0, 8, 2)  # best m depends on one feature
    m = torch.arange(1, 11).float()
    rewards = -(m[None] - best[:, None].float()).abs() + 0.1 * torch.randn(200, 10, generator=g)
    pol = BanditPolicy(10, 8)
    pol.fit(feats[:150], rewards[:150])
    pred = pol(feats[150:]).argmax(1) + 1
    assert (pred == best[150:]).float().mean() >= 0.85  # chance is 0.5


# --- ResShift chain ----------------------------------------------------------------------------
class TinyResShift(nn.Module):
    """x0-predictor with ResShift's call signature unet(x_scaled, t, lq)."""

    scale = 4

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(6, 3, 3, padding=1)
        self.rows = 0

    def unet(self, x, t, lq):
        self.rows += x.shape[0]
        up = torch.nn.functional.interpolate(lq, size=x.shape[-2:], mode="nearest")
        return torch.tanh(self.conv(torch.cat([x, up], 1)) + 0.01 * t.float()[:, None, None, None])


@pytest.mark.parametrize("m", [1, 3, 5])
def test_resshift_jump_mode_is_an_exact_respaced_sampler(m):
    from fewstep.resshift.chain import ResShiftChain
    from fewstep.skipdiff import keyed_noise

    rc = ResShiftChain(steps=15, min_noise_level=0.04, kappa=2.0, etas_end=0.99, power=0.3)
    s = SkipDiffSampler(ResShiftAdapter(rc), coarse=[14, 10, 7, 4], fine=5, mode="jump")
    model, lr = TinyResShift(), _lr(b=1, s=8)
    out, nfe = s(model, lr, policy=FixedPolicy(m), seed=9)
    assert nfe.tolist() == [3 + m] and model.rows == 3 + m
    # reference: ResShift's own exact jumps over the kept indices, same keyed noise
    y = torch.nn.functional.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1) * 2 - 1
    lq, shape = lr * 2 - 1, (1, 3, 32, 32)
    ref_model = TinyResShift()
    x = rc.prior_sample(y, keyed_noise(shape, [9], "prior"))
    kept = [(t, u, "coarse") for t, u in zip([14, 10, 7], [10, 7, 4])]
    tail = [4] + list(range(m - 2, -1, -1)) + [-1]
    kept += [(t, u, "fine") for t, u in zip(tail[:-1], tail[1:])]
    for t, u, stage in kept:
        tt = torch.tensor([t])
        x0 = ref_model.unet(rc.scale_input(x, tt), tt, lq)
        x = x0 if u < 0 else rc.jump(x, x0, t, u, noise=keyed_noise(shape, [9], f"{stage}/{u}"))
    torch.testing.assert_close(out, ((x + 1) / 2).clamp(0, 1), atol=1e-5, rtol=0)
