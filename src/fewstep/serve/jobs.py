"""Uploads and jobs of `fewstep serve`: one worker thread per device runs one job at a time.

Uploaded bytes are stored under the server's private temporary folder with names the server
chooses (the client's file name is kept only as a display/download name, never as a path), and
validated at once with `fewstep.imageio.read_image` under the configured pixel limit (which also
rejects decompression bombs from the header, before any pixel is decoded). Results are written by
the CLI's own per-image routine (`fewstep.commands.upscale._processor`: read, restore, keep alpha and
16-bit, `write_image`), so the page's PNG has the same bytes as `fewstep upscale`'s.
"""

from __future__ import annotations

import collections
import io
import re
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from .. import progress
from ..errors import FewstepError
from .models import ModelCache, ModelInfo, coerce_options

MAX_UPLOADS_KEPT = 64
MAX_JOBS_KEPT = 32


def safe_name(name: str) -> str:
    """A display/download name from the client's: last path component, harmless characters."""
    base = re.split(r"[\\/]", str(name or ""))[-1]
    base = re.sub(r"[^A-Za-z0-9._ -]", "_", base).strip(" .") or "image"
    return base[:100]


@dataclass
class Upload:
    id: str
    name: str
    path: Path
    width: int
    height: int
    bit_depth: int
    alpha: bool

    def to_json(self) -> dict:
        return {"id": self.id, "name": self.name, "width": self.width, "height": self.height,
                "bit_depth": self.bit_depth, "alpha": self.alpha}


@dataclass
class Result:
    name: str
    path: Path
    width: int
    height: int
    seconds: float
    error: str = ""


@dataclass
class Job:
    id: str
    model: str
    options: dict
    seed: int
    uploads: list[Upload]
    state: str = "queued"         # queued | running | done | error | cancelled
    message: str = ""
    fraction: float = 0.0
    label: str = ""
    results: list[Result] = field(default_factory=list)
    seconds: float = 0.0
    created: float = field(default_factory=time.time)
    reporter: progress.Reporter | None = None
    cancel_requested: bool = False


class JobManager:
    def __init__(self, workdir: Path, cache: ModelCache, models: dict[str, ModelInfo], *, max_pixels: int,
                 default_model: str | None = None):
        self.workdir, self.cache, self.models, self.max_pixels = Path(workdir), cache, models, max_pixels
        self.uploads: collections.OrderedDict[str, Upload] = collections.OrderedDict()
        self.jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self.queue: collections.deque[Job] = collections.deque()
        self.running: Job | None = None
        self.model_status = ""        # "loading fewstep-small" while the model is being built
        self._cv = threading.Condition()
        self._stop = False
        self._worker = threading.Thread(target=self._work, name="fewstep-serve-worker", daemon=True)
        self._preload = default_model if default_model in models and models[default_model].present else None
        self._worker.start()

    # ----------------------------------------------------------------------------------- uploads

    def add_upload(self, name: str, data: bytes) -> Upload:
        from ..imageio import read_image

        uid = uuid.uuid4().hex
        path = self.workdir / "uploads" / uid
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        shown = safe_name(name)
        try:
            img = read_image(path, max_pixels=self.max_pixels)
        except FewstepError as e:
            path.unlink(missing_ok=True)
            # read_image names our private file; the page names the user's
            raise FewstepError(str(e).replace(str(path), shown).replace("(max_pixels)", "(--max-pixels)")) from None
        up = Upload(uid, shown, path, img.width, img.height, img.bit_depth, img.alpha is not None)
        with self._cv:
            self.uploads[uid] = up
            while len(self.uploads) > MAX_UPLOADS_KEPT:
                _, old = self.uploads.popitem(last=False)
                old.path.unlink(missing_ok=True)
        return up

    # -------------------------------------------------------------------------------------- jobs

    def submit(self, model: str, options: dict, seed, upload_ids: list) -> Job:
        info = self.models.get(model)
        if info is None:
            raise FewstepError(f"unknown model {model!r}")
        if not info.present:
            raise FewstepError(f"model {model} cannot run here: {info.hint}")
        if info.needs_mask:
            raise FewstepError(f"model {model} needs a mask, which the page does not take yet; use fewstep upscale --mask")
        opts = coerce_options(info, options)
        try:
            seed = int(seed if seed not in (None, "") else 0)
        except (TypeError, ValueError):
            raise FewstepError(f"seed must be an integer, got {seed!r}") from None
        if not upload_ids:
            raise FewstepError("no image uploaded")
        with self._cv:
            missing = [u for u in upload_ids if u not in self.uploads]
            if missing:
                raise FewstepError("an uploaded file expired; upload it again")
            job = Job(uuid.uuid4().hex, model, opts, seed, [self.uploads[u] for u in upload_ids])
            self.jobs[job.id] = job
            self.queue.append(job)
            self._forget_old_jobs()
            self._cv.notify_all()
        return job

    def position(self, job: Job) -> int:
        """Jobs ahead of `job` (the running one included); 0 when it runs or has finished."""
        with self._cv:
            if job.state != "queued":
                return 0
            ahead = list(self.queue).index(job) if job in self.queue else 0
            return ahead + (1 if self.running is not None else 0)

    def cancel(self, job: Job) -> None:
        with self._cv:
            job.cancel_requested = True
            if job.state == "queued" and job in self.queue:
                self.queue.remove(job)
                job.state, job.message = "cancelled", "cancelled"
            elif job.reporter is not None:
                job.reporter.cancel()

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            for job in self.queue:
                job.state, job.message = "cancelled", "server stopped"
            self.queue.clear()
            if self.running is not None and self.running.reporter is not None:
                self.running.reporter.cancel()
            self._cv.notify_all()
        self._worker.join(timeout=5)

    def _forget_old_jobs(self) -> None:
        done = [j for j in self.jobs.values() if j.state in ("done", "error", "cancelled")]
        for j in done[: max(0, len(self.jobs) - MAX_JOBS_KEPT)]:
            self.jobs.pop(j.id, None)
            for r in j.results:
                r.path.unlink(missing_ok=True)

    def _work(self) -> None:
        if self._preload:
            try:
                self._load(self._preload, {})
            except FewstepError as e:  # reported again, on the page, by the first job that needs it
                print(f"warning: {e}", flush=True)
        while True:
            with self._cv:
                while not self.queue and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return
                job = self.queue.popleft()
                job.state = "running"
                job.reporter = progress.Reporter()
                self.running = job
            try:
                self._run(job)
            except progress.Cancelled:
                job.state, job.message = "cancelled", "cancelled"
            except FewstepError as e:
                job.state, job.message = "error", str(e)
            except Exception as e:  # noqa: BLE001 - the page gets one line, the log the details
                import traceback

                traceback.print_exc()
                job.state, job.message = "error", f"internal error: {e.__class__.__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            finally:
                with self._cv:
                    self.running = None
                    job.reporter = None

    def _load(self, name: str, options: dict):
        self.model_status = f"loading model {name}"
        try:
            return self.cache.get(name, options)
        except FewstepError:
            raise
        except Exception as e:  # noqa: BLE001 - a model that fails to build is reported, the server keeps running
            raise FewstepError(f"model {name} could not be loaded ({e.__class__.__name__}: "
                               f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
        finally:
            self.model_status = ""

    def _run(self, job: Job) -> None:
        from ..batch import Job as BatchJob
        from ..commands.upscale import _processor  # the CLI's per-image routine: same bytes as the CLI

        t_start = time.perf_counter()
        job.label = f"loading model {job.model}"
        up = self._load(job.model, job.options)
        outdir = self.workdir / "results" / job.id
        outdir.mkdir(parents=True, exist_ok=True)
        n = len(job.uploads)
        used: set[str] = set()
        for i, u in enumerate(job.uploads):
            if job.reporter.cancelled:
                raise progress.Cancelled("cancelled")
            stem = Path(u.name).stem or "image"
            name = stem + ".png"
            k = 1
            while name in used:  # two uploads with one name -> distinct names in the zip
                k += 1
                name = f"{stem}_{k}.png"
            used.add(name)
            dst = outdir / name

            def on_progress(frac: float, label: str, i=i, name=u.name) -> None:
                job.fraction = (i + frac) / n
                job.label = f"{name}: {label}" if n == 1 else f"image {i + 1}/{n} ({name}): {label}"

            job.reporter.callback = on_progress
            job.label = f"{u.name}: restoring"
            error = None
            t0 = time.perf_counter()
            with progress.reporting(job.reporter):
                try:
                    _processor(up, None, job.seed, True, True)(BatchJob(i, u.path, dst))
                except FewstepError as e:
                    error = str(e)
            secs = time.perf_counter() - t0
            if error is None:
                from PIL import Image

                with Image.open(dst) as im:
                    w, h = im.size
                job.results.append(Result(name, dst, w, h, secs))
            else:
                job.results.append(Result(name, dst, 0, 0, secs, error.replace(str(u.path), u.name)))
            job.fraction = (i + 1) / n
        job.seconds = time.perf_counter() - t_start
        errors = [r for r in job.results if r.error]
        if errors and len(errors) == n:
            job.state, job.message = "error", errors[0].error
        else:
            job.state = "done"
            job.message = f"{len(errors)} of {n} failed: {errors[0].error}" if errors else ""

    # ------------------------------------------------------------------------------------- output

    def zip_bytes(self, job: Job) -> bytes:
        buf = io.BytesIO()
        # PNG is already compressed: store, do not deflate again
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
            for r in job.results:
                if not r.error:
                    z.write(r.path, arcname=r.name)
        return buf.getvalue()

    def job_json(self, job: Job) -> dict:
        return {
            "id": job.id, "state": job.state, "message": job.message, "position": self.position(job),
            "fraction": round(job.fraction, 4), "label": job.label, "seconds": round(job.seconds, 2),
            "model": job.model, "seed": job.seed,
            "results": [{"name": r.name, "width": r.width, "height": r.height, "seconds": round(r.seconds, 2),
                         "error": r.error, "url": f"/api/jobs/{job.id}/file/{i}", "input": r_input.id}
                        for i, (r, r_input) in enumerate(zip(job.results, job.uploads))],
            "zip": f"/api/jobs/{job.id}/zip" if len(job.uploads) > 1 and job.state == "done" else None,
        }
