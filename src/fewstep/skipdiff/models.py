"""Registry entries (read lazily by fewstep.registry). Options, e.g.
`fewstep.load("skipdiff-sr3", policy="fixed", m=3)` or "skipdiff-sr3:policy=bandit,policy_path=FILE":
  policy  fixed | bandit | ppo     m      trailing fine steps for policy=fixed (1..fine)
  mode    reset | hold | jump      steps  plain ancestral sampling on an N-level cosine grid
  weights DIR or FILE with sr3_small.safetensors (default: the file shipped in fewstep/data/skipdiff)
"""

from ..registry import ModelSpec, OptionSpec
from ..weights import WeightFile

SR3_SMALL = WeightFile("data/skipdiff/sr3_small.safetensors",
                       sha256="33336e528b55d7e0f12077b4d0634c56703274e59e0437b350538f6003886a6b", bundled=True)

_SKIPDIFF_OPTIONS = (
    OptionSpec("policy", str, "fixed", "which fine steps to take: fixed (the last m), or a trained bandit/PPO policy",
               choices=("fixed", "bandit", "ppo")),
    OptionSpec("m", int, 10, "trailing fine steps for policy=fixed", min=0),
    OptionSpec("mode", str, "reset", "what a skipped fine step does", choices=("reset", "hold", "jump")),
    OptionSpec("coarse", int, 10, "coarse levels of the cosine chain", min=1),
    OptionSpec("fine", int, 10, "fine levels per coarse level", min=1),
    OptionSpec("policy_path", str, None, "trained policy file for policy=bandit/ppo"),
    OptionSpec("steps", int, None, "plain ancestral sampling on an N-level cosine grid instead of SkipDiff", min=1),
)

MODELS = (
    ModelSpec("skipdiff-sr3", "sr", 4,
              "SkipDiff on the small SR3 pixel DDPM (x4): 9 coarse + m fine steps, fixed/bandit/PPO policy",
              "fewstep.skipdiff.sr3:build", weights=(SR3_SMALL,), options=_SKIPDIFF_OPTIONS),
    ModelSpec("sr3-small", "sr", 4, "the small SR3 pixel DDPM (x4) with plain ancestral sampling (100 steps by default)",
              "fewstep.skipdiff.sr3:build", weights=(SR3_SMALL,),
              options=(OptionSpec("steps", int, 100, "ancestral sampling steps on a re-spaced cosine grid", min=1),)),
)


def folder_spec(folder) -> ModelSpec:
    """The spec of an SR3 model folder (the SR3 trainer's export): its card's sampler options are
    the defaults, so `fewstep.load(FOLDER)` samples as the card says unless told otherwise."""
    from dataclasses import replace
    from pathlib import Path

    from ..model_folder import read_card

    card = read_card(folder)
    saved = card.get("options", {})
    options = tuple(replace(o, default=saved[o.name]) if o.name in saved else o for o in _SKIPDIFF_OPTIONS)
    return ModelSpec(str(card.get("name", Path(folder).name)), "sr", int(card.get("scale", 4)),
                     f"model folder {folder}", "fewstep.skipdiff.sr3:load_folder", options=options)
