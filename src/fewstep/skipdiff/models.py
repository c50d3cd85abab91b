"""Registry entries (read lazily by fewstep.upscaler). Keyword arguments, e.g.
`fewstep.load("skipdiff-sr3", policy="fixed", m=3)` or "skipdiff-sr3:policy=bandit,policy_path=FILE":
  policy  fixed | bandit | ppo     m      trailing fine steps for policy=fixed (1..10)
  mode    reset | hold | jump      steps  plain ancestral sampling on an N-level cosine grid
  weights DIR or FILE with sr3_small.safetensors (default: the file shipped in fewstep/data/skipdiff)
"""

MODELS = [
    ("skipdiff-sr3", "fewstep.skipdiff.sr3:build",
     "SkipDiff on the small SR3 pixel DDPM (x4): 9 coarse + m fine steps, fixed/bandit/PPO policy"),
    ("sr3-small", "fewstep.skipdiff.sr3:build",
     "the small SR3 pixel DDPM (x4) with plain ancestral sampling (steps=100 by default)"),
]
