"""Fine-skip policies: fixed m, oracle (upper bound), the released PPO conv+GRU actor-critic, and
a single-shot bandit policy trained by enumerating every completion.

Sampler interface: `begin(coarse_result, sampler) -> state` (optional) and
`act(obs, state) -> (actions (B,) long: 0 denoise / 1 skip, state)`; obs carries the current
sample `x`, the decision index `k`, `num_fine`, and the `coarse` result. A policy with
`needs_enumeration = True` instead gets `choose(enumeration, hr=...) -> m (B,)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FewstepError

# The action vocabulary shared with the sampler (which imports it from here, so the two modules
# do not import each other).
DENOISE, SKIP = 0, 1


class FixedPolicy:
    """Skip the first F - m decisions, then denoise m times (m may be a per-sample tensor)."""

    def __init__(self, m: int | torch.Tensor):
        self.m = m

    def begin(self, cr, sampler):
        F_ = sampler.num_fine
        m = torch.as_tensor(self.m, dtype=torch.long).expand(cr.x.shape[0]).clone()
        if (m < 1).any() or (m > F_).any():
            raise FewstepError(f"fixed policy m must be in 1..{F_}, got {self.m}")
        return m

    def act(self, obs, m):
        return torch.where(obs["k"] < obs["num_fine"] - m, SKIP, DENOISE), m


class OraclePolicy:
    """Best completion per image by a reward (with the HR when the reward needs it): an upper bound,
    not a usable policy. `reward(images (B,3,H,W), hr) -> (B,)`, higher is better."""

    needs_enumeration = True

    def __init__(self, reward):
        self.reward = reward

    def choose(self, enumeration: dict, hr=None) -> torch.Tensor:
        imgs = enumeration["images"]
        r = torch.stack([torch.as_tensor(self.reward(imgs[j], hr), dtype=torch.float64) for j in range(len(imgs))])
        return r.argmax(0) + 1


# ---------------------------------------------------------------------------------------------
# PPO (faithful mode): conv encoder + GRU(1536), actor Linear(1536,2), critic Linear(1536,1)
# ---------------------------------------------------------------------------------------------
class ActorCritic(nn.Module):
    """The released actor-critic (GFNet lineage). Observation: the current sample in [-1, 1]
    resized to 128² (no LR, no explicit t; the GRU carries history).

    BatchNorm layers are always used with their running statistics (the module is put in eval
    mode by `act` and `evaluate`): with batch statistics the rollout and the update would see
    different normalisations and PPO's ratio would not start at 1.
    """

    def __init__(self, obs_size: int = 128, hidden: int = 1536):
        super().__init__()

        def blk(cin, cout, k):
            return [nn.Conv2d(cin, cout, k, 2, k // 2), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.obs_size = obs_size
        self.encoder = nn.Sequential(*blk(3, 32, 9), *blk(32, 24, 5), *blk(24, 24, 5), *blk(24, 24, 5))
        feat = 24 * (obs_size // 16) ** 2
        self.gru = nn.GRUCell(feat, hidden)
        self.actor = nn.Linear(hidden, 2)
        self.critic = nn.Linear(hidden, 1)
        self.hidden = hidden

    def observe(self, x: torch.Tensor) -> torch.Tensor:
        s = self.obs_size
        if x.shape[-2:] != (s, s):
            return F.interpolate(x.float(), size=(s, s), mode="bicubic", align_corners=False, antialias=True)
        return x.float().clone()  # the sampler updates x in place; the rollout must keep this view

    def _core(self, obs: torch.Tensor, h: torch.Tensor):
        h = self.gru(self.encoder(obs).flatten(1), h)
        return torch.log_softmax(self.actor(h), -1), self.critic(h).squeeze(-1), h

    def init_hidden(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, self.hidden)

    @torch.no_grad()
    def act(self, x: torch.Tensor, h: torch.Tensor, generator: torch.Generator | None = None,
            greedy: bool = False):
        """-> (action, log-prob, value, new hidden, observation); samples unless greedy."""
        self.eval()
        obs = self.observe(x)
        logp, v, h = self._core(obs, h)
        if greedy:
            a = logp.argmax(-1)  # per sample (the release took one argmax over the whole batch)
        else:
            a = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
        return a, logp.gather(-1, a[:, None]).squeeze(-1), v, h, obs

    def evaluate(self, obs: torch.Tensor, actions: torch.Tensor, h0: torch.Tensor | None = None):
        """Replay a trajectory: obs (K,B,3,s,s), actions (K,B) -> log-probs, values, entropies (K,B)."""
        self.eval()
        K, B = actions.shape
        h = self.init_hidden(B) if h0 is None else h0
        lps, vs, ents = [], [], []
        for k in range(K):
            logp, v, h = self._core(obs[k], h)
            lps.append(logp.gather(-1, actions[k][:, None]).squeeze(-1))
            vs.append(v)
            ents.append(-(logp.exp() * logp).sum(-1))
        return torch.stack(lps), torch.stack(vs), torch.stack(ents)


class PPOPolicy:
    """Sequential binary policy driven by an `ActorCritic` (greedy at test time, per sample).

    During training (`sample=True`) it samples with a seeded generator and records the rollout
    (observations, actions, log-probs, values) in `self.trajectory`.
    """

    def __init__(self, net: ActorCritic, *, sample: bool = False, seed: int = 0):
        self.net, self.sample = net, sample
        self.generator = torch.Generator().manual_seed(seed)
        self.trajectory: dict[str, list] = {}

    def begin(self, cr, sampler):
        self.trajectory = {"obs": [], "actions": [], "logp": [], "values": []}
        return self.net.init_hidden(cr.x.shape[0])

    def act(self, obs, h):
        a, lp, v, h, o = self.net.act(obs["x"], h, self.generator, greedy=not self.sample)
        for key, val in zip(("obs", "actions", "logp", "values"), (o, a, lp, v)):
            self.trajectory[key].append(val)
        return a, h


def ppo_update(net: ActorCritic, optimizer: torch.optim.Optimizer, traj: dict, reward: torch.Tensor, *,
               gamma: float = 0.7, clip: float = 0.2, epochs: int = 1, value_coef: float = 0.5,
               entropy_coef: float = 0.01) -> dict:
    """One PPO-clip update on a batch of episodes with terminal reward `reward` (B,).

    Released recipe: R_k = γ^(K-k)·r (terminal reward discounted back to decision k over the K+1
    fine steps), standardised over all (step, sample) entries; A = R - V (detached);
    loss = -min(ρA, clip(ρ)A) + 0.5·MSE(V, R) - 0.01·H.
    """
    obs = torch.stack(traj["obs"])  # (K,B,3,s,s) decisions only (the forced last step is no decision)
    actions = torch.stack(traj["actions"])
    old_lp = torch.stack(traj["logp"])
    K = actions.shape[0]
    disc = torch.tensor([gamma ** (K - k) for k in range(K)], dtype=torch.float32)
    R = disc[:, None] * reward.float()[None]
    R = (R - R.mean()) / (R.std() + 1e-5)
    stats = {}
    for _ in range(epochs):
        lp, v, ent = net.evaluate(obs, actions)
        ratio = torch.exp(lp - old_lp)
        adv = R - v.detach()
        pg = -torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv).mean()
        loss = pg + value_coef * F.mse_loss(v, R) - entropy_coef * ent.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        stats = {"loss": float(loss.detach()), "pg": float(pg.detach()), "entropy": float(ent.detach().mean()),
                 "ratio_dev": float((ratio.detach() - 1).abs().max())}
    return stats


# ---------------------------------------------------------------------------------------------
# Bandit (cheap exact alternative): predict m once from features of the coarse x̂0
# ---------------------------------------------------------------------------------------------
def bandit_features(cr) -> torch.Tensor:
    """Per-image statistics of the coarse state (spec §B2 "better observation"): residual energy
    |x̂0 - bicubic|, high-frequency energy of x̂0 and of the condition, local variance, the
    x̂0-vs-latent gap. Hand-made features because a few hundred training crops cannot fit a CNN."""
    x0 = cr.x0.float()
    cond = cr.cond["y"] if isinstance(cr.cond, dict) else cr.cond
    cond = cond.float()
    if cond.shape != x0.shape:
        cond = F.interpolate(cond, size=x0.shape[-2:], mode="bilinear", align_corners=False)
    lap = torch.tensor([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=torch.float32).view(1, 1, 3, 3)

    def hf(img):
        g = img.mean(1, keepdim=True)
        return F.conv2d(g, lap).abs().flatten(1).mean(1)

    def locvar(img):
        g = img.mean(1, keepdim=True)
        mu = F.avg_pool2d(g, 7, 1)
        return (F.avg_pool2d(g * g, 7, 1) - mu * mu).clamp_min(0).sqrt().flatten(1).mean(1)

    feats = [
        (x0 - cond).abs().flatten(1).mean(1),
        hf(x0), hf(cond), hf(cr.x.float()) - hf(x0),
        locvar(x0), locvar(cond),
        x0.flatten(1).mean(1), x0.flatten(1).std(1),
    ]
    return torch.log(torch.stack(feats, 1).abs() + 1e-4)


class BanditPolicy(nn.Module):
    """Multinomial logistic regression features -> m in 1..F, fitted to soft targets softmax(r/τ)
    of enumerated rewards (a contextual bandit solved as supervised learning)."""

    def __init__(self, num_fine: int = 10, num_features: int = 8):
        super().__init__()
        self.num_fine = num_fine
        self.register_buffer("mu", torch.zeros(num_features))
        self.register_buffer("sd", torch.ones(num_features))
        self.linear = nn.Linear(num_features, num_fine)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.linear((feats - self.mu) / self.sd)

    def fit(self, feats: torch.Tensor, rewards: torch.Tensor, *, tau: float = 0.05, weight_decay: float = 1e-3,
            iters: int = 300) -> float:
        """feats (N,D), rewards (N,F) (higher better). Rewards are standardised per image before the
        temperature so τ is scale-free. Deterministic (full-batch L-BFGS). Returns the final loss."""
        self.mu.copy_(feats.mean(0))
        self.sd.copy_(feats.std(0).clamp_min(1e-6))
        r = (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-8)
        target = torch.softmax(r / tau, 1)
        opt = torch.optim.LBFGS(self.linear.parameters(), lr=0.5, max_iter=iters, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = -(target * torch.log_softmax(self(feats), 1)).sum(1).mean()
            loss = loss + weight_decay * self.linear.weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():  # LBFGS.step returns the loss before the step; report the final one
            return float(-(target * torch.log_softmax(self(feats), 1)).sum(1).mean())

    # sampler interface
    def begin(self, cr, sampler):
        if sampler.num_fine != self.num_fine:
            raise FewstepError(f"bandit policy was trained for {self.num_fine} fine steps, sampler has {sampler.num_fine}")
        with torch.no_grad():
            m = self(bandit_features(cr)).argmax(1) + 1
        return m

    def act(self, obs, m):
        return torch.where(obs["k"] < obs["num_fine"] - m, SKIP, DENOISE), m

    def predict_m(self, cr) -> torch.Tensor:
        with torch.no_grad():
            return self(bandit_features(cr)).argmax(1) + 1


def load_policy(path, kind: str | None = None):
    """Load a policy saved by `fewstep.skipdiff.train` ({kind, sizes, state_dict}, weights_only)."""
    from ..checkpoint import load_state_dict, read_checkpoint

    sd = read_checkpoint(path)
    if not isinstance(sd, dict) or not isinstance(sd.get("state_dict"), dict):
        raise FewstepError(f"{path}: not a fewstep policy file (no state_dict)")
    kind = kind or sd.get("kind")
    try:
        if kind == "bandit":
            return load_state_dict(BanditPolicy(int(sd["num_fine"]), int(sd["num_features"])), sd["state_dict"], str(path))
        if kind == "ppo":
            net = ActorCritic(int(sd["obs_size"]), int(sd["hidden"]))
            return PPOPolicy(load_state_dict(net, sd["state_dict"], str(path)))
    except KeyError as e:
        raise FewstepError(f"{path}: {kind} policy file lacks {e.args[0]!r}") from None
    raise FewstepError(f"{path}: unknown policy kind {kind!r} (expected 'bandit' or 'ppo')")
