"""Batch runs that never lose data: list inputs, map them to outputs, check the plan, then work.

`plan_batch` turns the command line's inputs into a `Plan` of (input, output) jobs *before* any
model is loaded or any image computed, and refuses a plan that could destroy data:

* outputs mirror each input root's tree; with several inputs, each input folder gets its own
  sub-folder of the output (named after it, made unique: ``photos``, ``photos-2``), so two
  ``IMG_0001.png`` from two folders never share an output;
* files of one folder that would map to the same output (``good.png`` and ``good.jpg`` with
  ``--ext png``) get their source extension in the name (``good-png.png``, ``good-jpg.png``);
  any collision left is an error naming both inputs;
* the output folder is never scanned for inputs (``-o photos/out`` for input ``photos``), an output
  folder that is (or contains) an input folder is refused, and no output path may be an input file,
  `--overwrite` or not;
* the output folder must be (or become) a writable folder, and `--ext` a format we can write.

`run_jobs` executes a list of jobs: an existing output is skipped (resume), every per-image error of
any type is reported and the batch goes on, unexpected errors get their traceback written to a file,
and `--log` receives one JSON line per image. Jobs are split over processes by `Plan.share`, a pure
function of the plan, so ranks of `torchrun` never share an output (see fewstep.distributed).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .errors import FewstepError


@dataclass(frozen=True)
class Job:
    """One image of a batch: `index` is its position in the whole plan (the same on every rank)."""

    index: int
    src: Path
    dst: Path


@dataclass
class Plan:
    output: Path
    jobs: list[Job]

    def share(self, rank: int = 0, world: int = 1) -> list[Job]:
        """This rank's jobs: every `world`-th job starting at `rank` (round robin keeps the shares
        balanced when big and small images cluster in folders)."""
        return self.jobs[rank::world]


def check_ext(ext: str | None) -> str | None:
    """None/"auto" (keep each input's format) or a writable extension without the dot."""
    from .imageio import WRITE_EXTENSIONS

    if ext is None or ext.lower() == "auto":
        return None
    e = ext.lower().lstrip(".")
    if e not in WRITE_EXTENSIONS:
        raise FewstepError(f"--ext {ext!r}: not an output format; use one of {', '.join(WRITE_EXTENSIONS)} or auto")
    return e


def _inside(child: str, parent: str) -> bool:
    """True when real path `child` is `parent` or below it."""
    return child == parent or child.startswith(parent.rstrip(os.sep) + os.sep)


def _root_names(inputs: Sequence[Path]) -> list[str]:
    """Sub-folder of the output for each input: "" for files (and when there is one input), the
    folder's own name for folders, with -2, -3 ... appended when two folders share a name."""
    if len(inputs) == 1:
        return [""]
    names: list[str] = []
    used: set[str] = set()
    for p in inputs:
        if not p.is_dir():
            names.append("")
            continue
        base = Path(os.path.realpath(p)).name or "root"
        name, k = base, 2
        while name.lower() in used:
            name, k = f"{base}-{k}", k + 1
        used.add(name.lower())
        names.append(name)
    return names


def check_output_folder(output: Path) -> None:
    """Create `output` if needed and prove that we can write there (a file is created and removed),
    so a batch never computes images it cannot store."""
    if output.exists() and not output.is_dir():
        raise FewstepError(f"-o {output}: is a file, not a folder")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FewstepError(f"-o {output}: cannot create the output folder ({e.strerror or e})") from None
    probe = output / f".fewstep-write-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise FewstepError(f"-o {output}: output folder is not writable ({e.strerror or e})") from None


def plan_batch(inputs: Sequence[str | os.PathLike], output: str | os.PathLike, *, suffix: str = "",
               ext: str | None = "png", create: bool = True) -> Plan:
    """List `inputs` (files and folders), map each image to its output under `output` and check the
    plan (see the module docstring). Raises FewstepError, one line, before any work."""
    from .imageio import WRITE_EXTENSIONS, list_images

    ext = check_ext(ext)
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise FewstepError(f"-o {out}: is a file, not a folder")
    if suffix and (os.sep in suffix or "/" in suffix):
        raise FewstepError(f"--suffix {suffix!r}: must not contain a path separator")
    roots = [Path(p) for p in inputs]
    if not roots:
        raise FewstepError("no inputs given")
    real_out = os.path.realpath(out)
    for r in roots:
        if r.is_dir() and _inside(os.path.realpath(r), real_out):
            raise FewstepError(f"-o {out}: the output folder is (or contains) the input folder {r}; results "
                               "would be read back as inputs on the next run: choose an output folder outside it")
    names = _root_names(roots)
    pairs: list[tuple[Path, Path, str]] = []  # (file, root, output sub-folder)
    for r, name in zip(roots, names):
        pairs.extend((f, root, name) for f, root in list_images([r], exclude=[out]))
    # the same file reached through two inputs is done once (first occurrence)
    seen: set[str] = set()
    unique = []
    for f, root, name in pairs:
        key = os.path.realpath(f)
        if key not in seen:
            seen.add(key)
            unique.append((f, root, name))
    if not unique:
        raise FewstepError("no images found in " + ", ".join(map(str, roots)))

    def target(f: Path, root: Path, name: str, tag: str = "") -> Path:
        try:
            sub = f.parent.relative_to(root)
        except ValueError:
            sub = Path()
        src_ext = f.suffix.lstrip(".").lower()
        e = ext or (src_ext if src_ext in WRITE_EXTENSIONS else "png")
        stem = f.stem + (f"-{tag}" if tag else "") + (f"_{suffix}" if suffix else "")
        return out / name / sub / f"{stem}.{e}"

    dsts = [target(*u) for u in unique]
    groups: dict[str, list[int]] = {}
    for i, d in enumerate(dsts):
        # lower case: a case-insensitive file system would merge A.png and a.png
        groups.setdefault(str(d).lower(), []).append(i)
    for members in groups.values():
        if len(members) > 1:  # same stem, other extensions: name each by its source extension
            for i in members:
                f, root, name = unique[i]
                dsts[i] = target(f, root, name, tag=f.suffix.lstrip(".").lower() or "noext")
    final: dict[str, int] = {}
    for i, d in enumerate(dsts):
        k = str(d).lower()
        if k in final:
            raise FewstepError(f"{unique[final[k]][0]} and {unique[i][0]} would both be written to {d}; "
                               "run them separately or into different -o folders")
        final[k] = i
    # no output may be (or point at) an input file, --overwrite or not
    for i, d in enumerate(dsts):
        real = os.path.realpath(d)
        if real in seen:
            raise FewstepError(f"{d}: the output for {unique[i][0]} would replace an input file; "
                               "choose another -o folder or a --suffix")
    if create:
        check_output_folder(out)
    return Plan(out, [Job(i, u[0], d) for i, (u, d) in enumerate(zip(unique, dsts))])


# ------------------------------------------------------------------------------------ temp files

_TMP_RE = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{12}\.tmp$")  # fewstep.imageio._atomic_write's names


def clean_stale_temp(jobs: Sequence[Job]) -> int:
    """Remove the temporary files that a killed run left beside these jobs' outputs.

    Only temp files of *these* outputs are touched, so another rank (which owns other outputs) can
    keep writing in the same folders. Returns the number removed."""
    mine: dict[Path, set[str]] = {}
    for j in jobs:
        mine.setdefault(j.dst.parent, set()).add(j.dst.name)
    removed = 0
    for folder, names in mine.items():
        try:
            entries = os.listdir(folder)
        except OSError:
            continue
        for e in entries:
            m = _TMP_RE.match(e)
            if m and m.group("name") in names:
                try:
                    os.unlink(folder / e)
                    removed += 1
                except OSError:
                    pass
    return removed


# ------------------------------------------------------------------------------------ running


@dataclass
class Progress:
    """Counters of a run, updated as it goes (so an interrupt can report them)."""

    total: int = 0
    written: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def not_started(self) -> int:
        return self.total - self.written - self.skipped - self.failed


def crash_log_path() -> Path:
    """Where this process writes tracebacks of unexpected errors (under the fewstep home; falls
    back to the temp folder when that is not writable)."""
    import tempfile

    from .weights import fewstep_home

    stamp = time.strftime("%Y%m%d-%H%M%S")
    for base in (fewstep_home() / "logs", Path(tempfile.gettempdir()) / "fewstep-logs"):
        try:
            base.mkdir(parents=True, exist_ok=True)
            return base / f"crash-{stamp}-{os.getpid()}.txt"
        except OSError:
            continue
    return Path(tempfile.gettempdir()) / f"fewstep-crash-{stamp}-{os.getpid()}.txt"


def report_internal(exc: BaseException, where: str, *, debug: bool, log_path: list) -> str:
    """One line for an unexpected exception; the full traceback goes to a file (and to stderr with
    --debug). `log_path` is a one-element cache so a run writes one file."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if not log_path:
        log_path.append(crash_log_path())
    try:
        with open(log_path[0], "a") as fh:
            fh.write(f"--- {where}\n{text}\n")
        saved = f"traceback in {log_path[0]}"
    except OSError:
        saved = "traceback could not be saved"
    if debug:
        print(text, file=sys.stderr, end="")
    first = (str(exc).splitlines() or [""])[0][:200]
    hint = " (out of memory: try a smaller --tile)" if "out of memory" in str(exc).lower() or isinstance(exc, MemoryError) else ""
    return f"{where}: internal error {type(exc).__name__}: {first}{hint}; {saved}" + ("" if debug else " (--debug shows it)")


class JsonLog:
    """`--log FILE`: one JSON object per line, appended with a single write each (O_APPEND keeps the
    lines of several ranks whole)."""

    def __init__(self, path: str | os.PathLike | None):
        self.fd = None
        if path is not None:
            p = Path(path)
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
                self.fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
            except OSError as e:
                raise FewstepError(f"--log {p}: cannot open for appending ({e.strerror or e})") from None

    def write(self, **record) -> None:
        if self.fd is not None:
            os.write(self.fd, (json.dumps(record, default=str) + "\n").encode())

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def run_jobs(process: Callable[[Job], None], jobs: Sequence[Job], *, overwrite: bool, progress: Progress,
             log: JsonLog | None = None, record: dict | None = None, debug: bool = False, quiet: bool = False,
             on_done: Callable[[Job, float], None] | None = None) -> Progress:
    """Run `process(job)` (which must write job.dst) for each job not already done.

    An existing output is skipped unless `overwrite`. Any exception of a job is reported on one line
    and the batch goes on: FewstepError as it is, anything else as an internal error with its
    traceback saved (see `report_internal`). KeyboardInterrupt stops the run (progress tells how far
    it got)."""
    from .errors import FewstepError as _FE

    from tqdm import tqdm

    crash: list = []
    extra = dict(record or {})
    for job in tqdm(jobs, desc="upscale", unit="img", disable=quiet):
        t0 = time.perf_counter()
        if not overwrite and (job.dst.is_file() or job.dst.is_symlink()):
            progress.skipped += 1
            if log:
                log.write(input=str(job.src), output=str(job.dst), status="skipped", seconds=0.0, **extra)
            continue
        try:
            process(job)
        except _FE as e:
            msg = str(e)
        except Exception as e:  # per-image errors of any type must not end the batch
            msg = report_internal(e, str(job.src), debug=debug, log_path=crash)
        else:
            progress.written += 1
            dt = time.perf_counter() - t0
            if log:
                log.write(input=str(job.src), output=str(job.dst), status="written", seconds=round(dt, 3), **extra)
            if on_done:
                on_done(job, dt)
            continue
        progress.failed += 1
        progress.failures.append((job.src, msg))
        print(f"error: {msg}", file=sys.stderr)
        if log:
            log.write(input=str(job.src), output=str(job.dst), status="failed", seconds=round(time.perf_counter() - t0, 3),
                      error=msg, **extra)
    return progress
