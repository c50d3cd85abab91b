"""The shared training loop, built on `accelerate` (device placement, DDP, AMP, accumulation).

A *task* (see `TrainTask`) supplies the trainable models, the dataset and the batch -> loss
function, plus optional validation and export. The engine owns everything else: AdamW, the
warm-up + cosine schedule, EMA, AMP, gradient accumulation and clipping, the seeded data order,
periodic validation/checkpointing, CSV + TensorBoard logs and a tqdm bar.

Batches: ``train.batch_size`` is the *global* batch of one optimizer step. Each of the W processes
gets ``batch_size / (W * grad_accum)`` samples per micro-step, taken from one seeded permutation
per epoch, so one process with batch B and two DDP processes with B/2 each see exactly the same
samples per step (DDP averages gradients of per-process mean losses = the mean over B).

Exact resume: a checkpoint holds the models, EMA, optimizers, schedulers, grad scaler, every
process's python/numpy/torch/CUDA RNG states, the epoch and the number of steps consumed in it.
Resuming re-creates the same permutation and skips the consumed steps, so "N steps, stop, resume,
M steps" equals "N + M steps" on CPU. Validation runs inside a saved/restored RNG state, so it
never shifts the training random stream. For exact resume with data-loader workers the dataset
must derive its per-sample randomness from (seed, epoch, index) (`set_epoch(epoch)` is called on
it when present); with ``num_workers: 0`` any RNG use in the dataset is restored too.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ..errors import CheckpointError, FewstepError
from . import checkpoint as ckpt
from .config import section
from .ema import EMA
from .logging import RunLogger
from .schedule import build_scheduler

FORMAT = "fewstep-train-v1"


# ---------------------------------------------------------------------------- settings
@dataclass
class TrainSettings:
    """The ``train:`` section of a config (the engine's knobs)."""

    steps: int = 1000                 # total optimizer steps (the schedule's length)
    stop_at: int | None = None        # stop this run early at this step (resumable chunks)
    batch_size: int = 8               # global batch per optimizer step (all processes, all micro-steps)
    grad_accum: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup: int = 0
    schedule: str = "cosine"          # "cosine" (to eta_min after warm-up) or "constant"
    eta_min: float = 0.0
    ema_rate: float | None = 0.999    # null: no EMA
    clip_grad: float | None = None    # max global grad norm per optimizer; null: no clipping
    mixed_precision: str = "no"       # "no", "bf16", "fp16"
    log_every: int = 100
    val_every: int | None = None      # also validates at the end of each run; null: end only
    ckpt_every: int = 1000            # also checkpoints at the end of each run
    keep_last: int = 3
    num_workers: int = 0
    shuffle: bool = True
    device: str = "auto"              # "auto" (CUDA when available), "cpu"
    tensorboard: bool = True

    @classmethod
    def from_config(cls, cfg: dict) -> "TrainSettings":
        raw = dict(section(cfg, "train"))
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise FewstepError(f"config: unknown key(s) in 'train': {', '.join(unknown)}")
        s = cls(**raw)
        s.betas = tuple(float(b) for b in s.betas)  # type: ignore[assignment]
        try:  # "2e4" in YAML is a float; counts must be ints
            for name in ("steps", "batch_size", "grad_accum", "warmup", "log_every", "ckpt_every", "keep_last",
                         "num_workers", "stop_at", "val_every"):
                v = getattr(s, name)
                if v is not None:
                    if float(v) != int(float(v)):
                        raise ValueError(name)
                    setattr(s, name, int(float(v)))
            for name in ("lr", "weight_decay", "eps", "eta_min", "ema_rate", "clip_grad"):
                v = getattr(s, name)
                if v is not None:
                    setattr(s, name, float(v))
        except (TypeError, ValueError):
            raise FewstepError(f"config: train.{name} has an invalid value {getattr(s, name)!r}") from None
        for name in ("steps", "batch_size", "grad_accum", "log_every", "ckpt_every"):
            if int(getattr(s, name)) <= 0:
                raise FewstepError(f"config: train.{name} must be a positive integer, got {getattr(s, name)}")
        if s.mixed_precision not in ("no", "bf16", "fp16"):
            raise FewstepError(f"config: train.mixed_precision must be no/bf16/fp16, got {s.mixed_precision!r}")
        return s


# ---------------------------------------------------------------------------- task protocol
class TrainTask:
    """What a trainer supplies. Override `build_models`, `dataset` and `loss`; the rest is optional.

    `loss(ctx, opt, batch)` is called once per optimizer name (in `optimizers()` order) for every
    micro-batch and returns (scalar loss, {name: float} logs). While optimizer `opt`'s loss is
    computed, parameters of models that belong only to other optimizers have requires_grad off, so
    e.g. a generator loss through the discriminator does not touch the discriminator's gradients.
    Under DDP call a model that another optimizer trains through ``ctx.raw[name]`` (unwrapped).
    """

    def setup(self, ctx: "Context") -> None:
        """Called once before `build_models`: place frozen helpers on ``ctx.device`` here."""

    def build_models(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def optimizers(self) -> dict[str, dict[str, Any]]:
        """{optimizer name: {"models": [model names], optional "lr"/"betas"/"weight_decay"/"eta_min"}}."""
        return {"main": {"models": None}}  # None: every model

    def ema_models(self) -> list[str] | None:
        """Names of models that get an EMA (None: all)."""
        return None

    def active(self, opt: str, step: int) -> bool:
        """Whether optimizer `opt` trains at optimizer step `step` (e.g. a discriminator that starts late)."""
        return True

    def dataset(self) -> torch.utils.data.Dataset:
        raise NotImplementedError

    def collate(self, items: list) -> Any:
        return torch.utils.data.default_collate(items)

    def loss(self, ctx: "Context", opt: str, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def validate(self, ctx: "Context", models: dict[str, nn.Module]) -> dict[str, float]:
        """Metrics of the EMA (or live) models; runs on the main process under torch.no_grad()."""
        return {}

    def export(self, ctx: "Context", models: dict[str, nn.Module]) -> None:
        """Write the release weights (EMA when enabled); main process only, at the end of each run."""


@dataclass
class Context:
    """What a task sees: the accelerator, device, wrapped/unwrapped models and the current step."""

    accelerator: Any
    out_dir: Path
    cfg: dict
    settings: TrainSettings
    quiet: bool
    step: int = 0
    epoch: int = 0
    models: dict[str, nn.Module] = field(default_factory=dict)  # prepared (DDP-wrapped when distributed)
    raw: dict[str, nn.Module] = field(default_factory=dict)     # unwrapped

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process


# ---------------------------------------------------------------------------- data order
class StepBatchSampler(torch.utils.data.Sampler):
    """This process's micro-batches for the optimizer steps `start_step ..` of one epoch.

    One seeded permutation per epoch; optimizer step k takes the global slice [k*B, (k+1)*B),
    split into `grad_accum` micro-steps, each split evenly across processes. Incomplete global
    batches at the end of an epoch are dropped so every step has the same size.
    """

    def __init__(self, n: int, *, global_batch: int, grad_accum: int, world: int, rank: int,
                 seed: int, epoch: int, start_step: int = 0, shuffle: bool = True):
        self.micro = global_batch // (grad_accum * world)
        self.n, self.B, self.accum, self.world, self.rank = n, global_batch, grad_accum, world, rank
        self.steps = n // global_batch
        self.start = start_step
        if shuffle:
            g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch)) % (2**63))
            self.order = torch.randperm(n, generator=g)
        else:
            self.order = torch.arange(n)

    def __len__(self) -> int:
        return max(self.steps - self.start, 0) * self.accum

    def __iter__(self) -> Iterator[list[int]]:
        for k in range(self.start, self.steps):
            for j in range(self.accum):
                lo = k * self.B + (j * self.world + self.rank) * self.micro
                yield self.order[lo:lo + self.micro].tolist()


def steps_per_epoch(n: int, global_batch: int) -> int:
    return n // global_batch


def _seed_worker(worker_id: int) -> None:
    # numpy/python in workers otherwise start from the parent's copied state (same in every worker)
    import random

    import numpy as np

    s = torch.initial_seed() % (2**32)
    np.random.seed(s)
    random.seed(s)


# ---------------------------------------------------------------------------- engine
def _make_accelerator(s: TrainSettings):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState, PartialState

    cpu = s.device == "cpu" or not torch.cuda.is_available()
    if s.device not in ("auto", "cpu", "cuda"):
        raise FewstepError(f"config: train.device must be auto/cpu/cuda, got {s.device!r}")
    if s.device == "cuda" and not torch.cuda.is_available():
        raise FewstepError("config: train.device is 'cuda' but no CUDA device is available")
    # A previous run in the same (non-distributed) process leaves accelerate's singletons behind
    # with its own precision/accumulation; start clean so runs do not inherit each other's setup.
    if not torch.distributed.is_initialized():
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        PartialState._reset_state()
    try:
        return Accelerator(
            cpu=cpu,
            mixed_precision=s.mixed_precision,
            gradient_accumulation_steps=s.grad_accum,
            step_scheduler_with_optimizer=False,
        )
    except (ValueError, RuntimeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FewstepError(f"config: train.mixed_precision={s.mixed_precision!r} not usable here: {msg}") from None


def _reduce_mean(accelerator, values: dict[str, float], count: int) -> dict[str, float]:
    """Mean over micro-steps and processes of the logged values (same keys on every process)."""
    if not values:
        return {}
    keys = sorted(values)
    t = torch.tensor([values[k] / max(count, 1) for k in keys], dtype=torch.float64, device=accelerator.device)
    if accelerator.num_processes > 1:
        t = accelerator.reduce(t, reduction="mean")
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def run_training(task: TrainTask, cfg: dict, *, resume: bool = True, quiet: bool = False) -> dict[str, Any]:
    """Train `task` as configured by `cfg` (needs ``out_dir``, ``seed``, ``train:``); returns a summary.

    With `resume` the newest checkpoint in ``out_dir/checkpoints`` is continued; without it an
    ``out_dir`` that already holds checkpoints is refused (nothing is overwritten).
    """
    return Trainer(task, cfg, resume=resume, quiet=quiet).fit()


class Trainer:
    """One training run of a `TrainTask`: `Trainer(task, cfg).fit()` (what `run_training` does).

    `fit` = `_prepare` (accelerator, models, optimizers, data, resume) then the step loop, where each
    micro-batch goes through `_train_batch` and each completed optimizer step through `_after_step`
    (EMA, logs, periodic validation and checkpoints), then a final checkpoint, validation and export.
    The order of every random draw is part of the contract (exact resume), so keep it when editing.
    """

    def __init__(self, task: TrainTask, cfg: dict, *, resume: bool = True, quiet: bool = False):
        self.task, self.cfg, self.resume, self.quiet = task, cfg, resume, quiet
        self.s = TrainSettings.from_config(cfg)
        if not cfg.get("out_dir"):
            raise FewstepError("config: missing required key 'out_dir'")
        self.out_dir = Path(cfg["out_dir"])
        self.seed = int(cfg.get("seed", 0))
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.step = self.epoch = self.in_epoch = 0

    # ------------------------------------------------------------------------ setup
    def _prepare(self) -> None:
        from accelerate.utils import set_seed

        s, task = self.s, self.task
        self.accelerator = accelerator = _make_accelerator(s)
        self.ctx = ctx = Context(accelerator=accelerator, out_dir=self.out_dir, cfg=self.cfg, settings=s, quiet=self.quiet)
        self.world = world = accelerator.num_processes
        if s.batch_size % (s.grad_accum * world):
            raise FewstepError(
                f"config: train.batch_size={s.batch_size} is not divisible by grad_accum x processes = "
                f"{s.grad_accum} x {world}")

        self.latest = ckpt.latest_checkpoint(self.ckpt_dir)
        if self.latest is not None and not self.resume:
            raise FewstepError(f"{self.ckpt_dir} already holds checkpoints; resume, or choose another out_dir")

        # Identical initial weights on every process (DDP would broadcast rank 0's anyway).
        set_seed(self.seed)
        task.setup(ctx)
        raw_models = task.build_models()
        if not raw_models:
            raise FewstepError("trainer built no models")
        self._build_optimizers(raw_models)

        # ---- data
        self.dataset = task.dataset()
        self.n_data = len(self.dataset)
        self.spe = steps_per_epoch(self.n_data, s.batch_size)
        if self.spe == 0:
            raise FewstepError(f"dataset has {self.n_data} samples, fewer than train.batch_size={s.batch_size}")
        self.logger = RunLogger(self.out_dir, enabled=accelerator.is_main_process, tensorboard=s.tensorboard)
        if self.latest is not None:
            self._restore(self.latest)
        else:
            # different random draws (noise, timesteps) per process, same on every fresh start
            set_seed(self.seed + 7919 * accelerator.process_index)
        self.stop = s.steps if s.stop_at is None else min(int(s.stop_at), s.steps)

    def _build_optimizers(self, raw_models: dict[str, nn.Module]) -> None:
        """One AdamW (and schedule) per task optimizer group; EMAs; models through accelerate."""
        s, task, accelerator, ctx = self.s, self.task, self.accelerator, self.ctx
        self.opt_specs = opt_specs = task.optimizers()
        if s.mixed_precision == "fp16" and len(opt_specs) > 1:
            # one GradScaler is shared by all optimizers and updated after each step: the scale could change
            # between them. bf16 needs no scaler.
            raise FewstepError("config: train.mixed_precision 'fp16' supports one optimizer only; use 'bf16'")
        self.owner = owner = {}
        for oname, spec in opt_specs.items():
            names = spec.get("models") or list(raw_models)
            for n in names:
                if n not in raw_models:
                    raise FewstepError(f"trainer: optimizer {oname!r} names unknown model {n!r}")
                owner.setdefault(n, []).append(oname)
            spec["models"] = names
        ema_names = task.ema_models()
        ema_names = list(raw_models) if ema_names is None else list(ema_names)

        self.names = names = list(raw_models)
        prepared = accelerator.prepare(*[raw_models[n] for n in names])
        if len(names) == 1:
            prepared = (prepared,)
        ctx.models = dict(zip(names, prepared))
        ctx.raw = {n: accelerator.unwrap_model(m) for n, m in ctx.models.items()}

        self.optimizers, self.schedulers, self.opt_params = {}, {}, {}
        for oname, spec in opt_specs.items():
            params = [p for n in spec["models"] for p in ctx.raw[n].parameters() if p.requires_grad]
            if not params:
                raise FewstepError(f"trainer: optimizer {oname!r} has no trainable parameters")
            lr = float(spec.get("lr", s.lr))
            opt = torch.optim.AdamW(
                params, lr=lr, betas=tuple(spec.get("betas", s.betas)),
                weight_decay=float(spec.get("weight_decay", s.weight_decay)), eps=s.eps)
            eta_min = float(spec.get("eta_min", s.eta_min * lr / s.lr if s.lr else 0.0))
            self.schedulers[oname] = build_scheduler(opt, total=s.steps, warmup=int(s.warmup), eta_min=eta_min,
                                                     kind=s.schedule)
            self.optimizers[oname] = accelerator.prepare(opt)
            self.opt_params[oname] = params
        self.emas = {n: EMA(ctx.raw[n], s.ema_rate) for n in ema_names} if s.ema_rate is not None else {}

    def _restore(self, latest: Path) -> None:
        """Continue from checkpoint `latest`: weights, EMA, optimizers, schedules, scaler, position, RNG."""
        from accelerate.utils import set_seed

        accelerator, ctx = self.accelerator, self.ctx
        state = ckpt.load_checkpoint(latest)
        if state.get("format") != FORMAT:
            raise CheckpointError(f"{latest}: unknown checkpoint format {state.get('format')!r}")
        for n in self.names:
            if n not in state["models"]:
                raise CheckpointError(f"{latest}: no weights for model {n!r}")
            try:
                ctx.raw[n].load_state_dict(state["models"][n])
            except RuntimeError as e:
                raise CheckpointError(f"{latest}: model {n!r} does not match the config ({str(e).splitlines()[0]})") from None
        for n, e in self.emas.items():
            if n in state.get("ema", {}):
                e.load_state_dict(state["ema"][n])
            else:
                e.module.load_state_dict(ctx.raw[n].state_dict())
        for oname, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][oname])
            self.schedulers[oname].load_state_dict(state["schedulers"][oname])
        if accelerator.scaler is not None and state.get("scaler"):
            accelerator.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.in_epoch = int(state["step"]), int(state["epoch"]), int(state["batch_in_epoch"])
        rngs = state.get("rng") or []
        if len(rngs) == self.world:
            ckpt.restore_rng(rngs[accelerator.process_index])
        else:
            # a different number of processes: the data order is still exact, random draws are not
            set_seed(self.seed + 7919 * accelerator.process_index + self.step)
            if accelerator.is_main_process and not self.quiet:
                print(f"note: checkpoint saved with {len(rngs)} processes, resuming with {self.world}; RNG reseeded")
        task_state = state.get("task")
        if task_state is not None and hasattr(self.task, "load_state_dict"):
            self.task.load_state_dict(task_state)
        self.logger.resume_at(self.step)

    # ------------------------------------------------------------------------ checkpoints, validation
    def save(self) -> Path | None:
        """A resumable checkpoint of the current step (every process takes part; rank 0 writes)."""
        accelerator, world = self.accelerator, self.world
        rng = ckpt.capture_rng()
        if world > 1:
            gathered: list = [None] * world
            torch.distributed.all_gather_object(gathered, rng)
            rng_all = gathered
        else:
            rng_all = [rng]
        path = None
        if accelerator.is_main_process:
            state = {
                "format": FORMAT,
                "step": self.step,
                "epoch": self.epoch,
                "batch_in_epoch": self.in_epoch,
                "world_size": world,
                "models": {n: {k: v.detach().cpu() for k, v in self.ctx.raw[n].state_dict().items()} for n in self.names},
                "ema": {n: {k: v.cpu() for k, v in e.state_dict().items()} for n, e in self.emas.items()},
                "optimizers": {o: opt.state_dict() for o, opt in self.optimizers.items()},
                "schedulers": {o: sch.state_dict() for o, sch in self.schedulers.items()},
                "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
                "rng": [{k: (v.cpu() if torch.is_tensor(v) else v) for k, v in r.items()} for r in rng_all],
                "task": self.task.state_dict() if hasattr(self.task, "state_dict") else None,
                "config": {k: v for k, v in self.cfg.items()},
            }
            path = ckpt.save_checkpoint(state, self.ckpt_dir, self.step, keep=self.s.keep_last)
        accelerator.wait_for_everyone()
        return path

    def eval_models(self) -> dict[str, nn.Module]:
        """The models to validate and export: the EMA copy where there is one."""
        return {n: (self.emas[n].module if n in self.emas else self.ctx.raw[n]) for n in self.names}

    def validate(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        ctx = self.ctx
        ctx.step, ctx.epoch = self.step, self.epoch
        if self.accelerator.is_main_process:
            # validation may draw random numbers; keep the training stream untouched
            saved = ckpt.capture_rng()
            was_training = {n: m.training for n, m in ctx.raw.items()}
            for m in ctx.raw.values():
                m.eval()
            try:
                with torch.no_grad():
                    metrics = self.task.validate(ctx, self.eval_models()) or {}
            finally:
                for n, m in ctx.raw.items():
                    m.train(was_training[n])
                ckpt.restore_rng(saved)
            if metrics:
                self.logger.log("val", self.step, metrics)
        self.accelerator.wait_for_everyone()
        return metrics

    # ------------------------------------------------------------------------ the loop
    def _epoch_loader(self):
        """The loader over this process's micro-batches of the current epoch, from `in_epoch` on."""
        s = self.s
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        sampler = StepBatchSampler(
            self.n_data, global_batch=s.batch_size, grad_accum=s.grad_accum, world=self.world,
            rank=self.accelerator.process_index, seed=self.seed, epoch=self.epoch, start_step=self.in_epoch,
            shuffle=s.shuffle)
        return torch.utils.data.DataLoader(
            self.dataset, batch_sampler=sampler, num_workers=s.num_workers, collate_fn=self.task.collate,
            worker_init_fn=_seed_worker if s.num_workers else None,
            # own generator: creating an iterator must not draw from the global torch RNG
            generator=torch.Generator().manual_seed(self.seed + self.epoch),
            pin_memory=self.accelerator.device.type == "cuda")

    def _train_batch(self, batch: Any) -> bool:
        """Forward/backward of one micro-batch; True when it completed an optimizer step."""
        s, accelerator, ctx = self.s, self.accelerator, self.ctx
        batch = _to_device(batch, accelerator.device)
        ctx.step, ctx.epoch = self.step, self.epoch
        active = [o for o in self.optimizers if self.task.active(o, self.step)]
        with accelerator.accumulate(*self.all_prepared):
            for oname in active:
                loss, logs = _loss_for(self.task, ctx, oname, batch, self.opt_specs, self.owner, accelerator)
                if not torch.isfinite(loss.detach()).all():
                    raise FewstepError(f"loss {oname!r} is not finite at step {self.step}; lower train.lr or check the data")
                accelerator.backward(loss)
                for k, v in logs.items():
                    self.sums[k] = self.sums.get(k, 0.0) + float(v)
            self.count += 1
            if not accelerator.sync_gradients:
                return False
            # ---- optimizer step (all micro-batches of this step are accumulated)
            for oname in active:
                if s.clip_grad:
                    gn = accelerator.clip_grad_norm_(self.opt_params[oname], float(s.clip_grad))
                    self.sums[f"grad_norm_{oname}"] = self.sums.get(f"grad_norm_{oname}", 0.0) + float(gn) * s.grad_accum
                self.optimizers[oname].step()
            self.used_lr = float(next(iter(self.optimizers.values())).param_groups[0]["lr"])
            with warnings.catch_warnings():
                # a not-yet-active optimizer (a late discriminator) still follows the global schedule
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
                for oname in self.optimizers:
                    self.schedulers[oname].step()
            for opt in self.optimizers.values():
                opt.zero_grad(set_to_none=True)
        return True

    def _after_step(self) -> None:
        """EMA, counters, logs, and the periodic validation and checkpoint after an optimizer step."""
        s = self.s
        for n, e in self.emas.items():
            e.update(self.ctx.raw[n])
        self.step += 1
        step_epoch = self.epoch
        self.in_epoch += 1
        if self.in_epoch >= self.spe:
            self.epoch, self.in_epoch = self.epoch + 1, 0
        self.bar.update(1)
        step = self.step
        if step % s.log_every == 0 or step == self.stop:
            logs = _reduce_mean(self.accelerator, self.sums, self.count)
            now = time.perf_counter()
            logs["lr"] = self.used_lr  # the lr of this step's update (first optimizer)
            logs["sec_per_step"] = (now - self.t_last) / max(self.count / s.grad_accum, 1)
            logs["epoch"] = step_epoch  # the epoch this step's batch came from
            self.t_last, self.sums, self.count = now, {}, 0
            self.logger.log("train", step, logs)
            self.last_logs = logs
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if k.startswith("loss")}, refresh=False)
        t_pause = time.perf_counter()
        if s.val_every and step % int(s.val_every) == 0 and step != self.stop:
            self.last_val = self.validate() or self.last_val
        if step % s.ckpt_every == 0 and step != self.stop:
            self.save()
            self.last_saved = step
        self.t_last += time.perf_counter() - t_pause  # sec_per_step counts training only

    def fit(self) -> dict[str, Any]:
        """Train to ``train.steps`` (or ``stop_at``), checkpoint, validate, export; returns a summary."""
        from tqdm.auto import tqdm

        self._prepare()
        accelerator = self.accelerator
        summary: dict[str, Any] = {"start_step": self.step}
        self.last_logs: dict[str, float] = {}
        self.last_val: dict[str, float] = {}
        self.sums: dict[str, float] = {}
        self.count = 0
        self.t_last = time.perf_counter()
        self.bar = tqdm(total=self.stop, initial=self.step, disable=self.quiet or not accelerator.is_main_process,
                        desc=f"train {self.out_dir.name}", dynamic_ncols=True)
        self.all_prepared = list(self.ctx.models.values())
        for m in self.all_prepared:
            m.train()
        self.last_saved = self.step if self.latest is not None else -1

        stop_flag = _StopRequest()
        stop_flag.install()
        interrupted = False
        try:
            while self.step < self.stop:
                if self.in_epoch >= self.spe:  # the dataset shrank since the checkpoint: go on with the next epoch
                    self.epoch, self.in_epoch = self.epoch + 1, 0
                for batch in self._epoch_loader():
                    if not self._train_batch(batch):
                        continue
                    self._after_step()
                    if stop_flag.agreed(accelerator):
                        interrupted = True
                        break
                    if self.step >= self.stop or self.in_epoch == 0:
                        break  # a new epoch needs a new permutation (or we are done)
                if interrupted:
                    break
        finally:
            stop_flag.uninstall()
            self.bar.close()
        step = self.step
        if interrupted and accelerator.is_main_process and not self.quiet:
            print(f"stopping at step {step} (signal); rerun the same command to resume")

        if self.last_saved != step:
            summary["checkpoint"] = str(self.save() or "")
        if not interrupted and (step > summary["start_step"] or self.latest is None):
            self.last_val = self.validate() or self.last_val
        self.ctx.step, self.ctx.epoch = step, self.epoch
        if accelerator.is_main_process:
            self.task.export(self.ctx, self.eval_models())
        self.logger.flush()
        self.logger.close()
        accelerator.wait_for_everyone()
        summary.update(step=step, epoch=self.epoch, interrupted=interrupted, out_dir=str(self.out_dir),
                       train=self.last_logs, val=self.last_val,
                       checkpoint=str(ckpt.latest_checkpoint(self.ckpt_dir) or ""))
        return summary


class _StopRequest:
    """SIGTERM/SIGINT (a cluster's preemption, Ctrl-C) end the run at the next step boundary with a
    checkpoint, so an interrupted run loses nothing; a second signal aborts at once."""

    def __init__(self):
        self.requested = False
        self._old: dict = {}

    def install(self) -> None:
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def agreed(self, accelerator) -> bool:
        """True on every process when any process was asked to stop (all stop at the same step)."""
        if accelerator.num_processes == 1:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


def _loss_for(task, ctx, oname, batch, opt_specs, owner, accelerator):
    """task.loss with the parameters that only other optimizers train frozen meanwhile."""
    frozen = []
    if len(opt_specs) > 1:
        for n, opts in owner.items():
            if oname not in opts:
                for p in ctx.raw[n].parameters():
                    if p.requires_grad:
                        p.requires_grad_(False)
                        frozen.append(p)
    try:
        with accelerator.autocast():
            out = task.loss(ctx, oname, batch)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    if isinstance(out, tuple):
        loss, logs = out
    else:
        loss, logs = out, {}
    logs = dict(logs)
    logs.setdefault("loss" if len(opt_specs) == 1 else f"loss_{oname}", float(loss.detach()))
    return loss.float(), logs


def _to_device(batch: Any, device: torch.device) -> Any:
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def export_safetensors(models: dict[str, nn.Module], folder: str | Path, *, dtype: torch.dtype = torch.float32,
                       skip: tuple[str, ...] = ()) -> list[Path]:
    """Save each model's state dict as ``folder/<name>.safetensors`` (floats cast to `dtype`)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, m in models.items():
        sd = {}
        for k, v in m.state_dict().items():
            if any(s in k for s in skip):
                continue
            v = v.detach().cpu()
            sd[k] = (v.to(dtype) if v.is_floating_point() else v).contiguous()
        path = folder / f"{name}.safetensors"
        tmp = path.with_suffix(".safetensors.tmp")
        save_file(sd, str(tmp))
        tmp.replace(path)
        written.append(path)
    return written
