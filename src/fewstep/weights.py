"""Where weight files come from: a local folder, the fewstep cache, or (online) their release URL.

Resolution order for a file named FILE:
  1. ``weights_dir/FILE`` when the caller gives a folder (``--weights DIR``);
  2. ``$FEWSTEP_HOME/weights/FILE`` (default ``~/.cache/fewstep/weights``);
  3. download from the file's URL into (2) — only when ``download=True`` and `offline()` is false.
     The download goes to ``FILE.part`` and is renamed only once complete (and its sha256 checked
     when known), so an interrupted download never leaves a truncated weight file.
Hub folders (``WeightFile.hub_repo``, e.g. SD-Turbo) are found as ``DIR/NAME`` or ``cache/NAME``,
else in the Hugging Face cache, else fetched with ``huggingface_hub.snapshot_download`` when online.
If all fail, `WeightsNotFoundError` says which file is missing and which folder to put it in.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .errors import WeightsNotFoundError


@dataclass(frozen=True)
class WeightFile:
    """One file (or hub folder) a model needs; `fewstep.registry.WeightFile` is this class.

    filename: canonical local name ("resshift_realsrx4_s4_v3.pth", or "sd-turbo" for a folder);
    url: release URL (None when unpublished); sha256/size: of the released file, when known;
    hub_repo: a Hugging Face repo whose snapshot is this folder; bundled: ships inside the package
    (then `filename` is relative to the fewstep package folder); aliases: other names users may
    have saved it under (e.g. the name in the release URL).
    """

    filename: str
    url: str | None = None
    sha256: str | None = None
    size: int | None = None
    hub_repo: str | None = None
    bundled: bool = False
    aliases: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The file's base name (bundled files carry a package-relative path in `filename`)."""
        return Path(self.filename).name


_FALSE = ("", "0", "false", "no", "off")


def offline() -> bool:
    """The one meaning of the offline switch: FEWSTEP_OFFLINE or HF_HUB_OFFLINE set to anything
    but empty/0/false/no/off means no network access for weights."""
    return any(os.environ.get(v, "").strip().lower() not in _FALSE for v in ("FEWSTEP_OFFLINE", "HF_HUB_OFFLINE"))


def fewstep_home() -> Path:
    return Path(os.environ.get("FEWSTEP_HOME", Path.home() / ".cache" / "fewstep"))


def cache_dir() -> Path:
    return fewstep_home() / "weights"


def package_dir() -> Path:
    """The installed fewstep package folder (bundled weight files are relative to it)."""
    return Path(__file__).resolve().parent


def find_local(wf: WeightFile, weights_dir: str | Path | None = None) -> Path | None:
    """The local copy of `wf` (a file, or a folder for hub folders), or None."""
    if wf.bundled:
        if weights_dir is not None:  # a user's folder replaces the bundled copy
            p = Path(weights_dir) / wf.name
            return p if p.exists() else None
        p = package_dir() / wf.filename
        return p if p.exists() else None
    folders = ([Path(weights_dir)] if weights_dir else []) + [cache_dir()]
    for folder in folders:
        for name in (wf.filename, *wf.aliases):
            p = folder / name
            if (p.is_dir() if wf.hub_repo else p.is_file()):
                return p
    if wf.hub_repo:
        return _hub_cached(wf.hub_repo)
    return None


def _hub_cached(repo: str) -> Path | None:
    """The snapshot of `repo` already in the Hugging Face cache, without touching the network."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    try:
        return Path(snapshot_download(repo, local_files_only=True))
    except Exception:  # not cached (huggingface_hub raises several error types for that)
        return None


def missing_line(wf: WeightFile, weights_dir: str | Path | None = None) -> str:
    """ "put FILE in DIR" for `wf` (plus where it is published)."""
    if wf.bundled and weights_dir is None:
        where = (package_dir() / wf.filename).parent
        return f"put {wf.name} in {where} (it ships with fewstep: reinstall the package)"
    folder = Path(weights_dir) if weights_dir else cache_dir()
    if wf.hub_repo:
        return f"put {wf.filename} in {folder} (a diffusers-layout snapshot of the hub repo {wf.hub_repo})"
    source = f" (it is published at {wf.url})" if wf.url else ""
    return f"put {wf.name} in {folder}{source}"


def resolve(wf: WeightFile, weights_dir: str | Path | None = None, *, download: bool = True,
            quiet: bool = False, into: str | Path | None = None) -> Path:
    """Return a local path to `wf`, downloading it if allowed and possible: into `into` when given
    (`fewstep weights download --weights DIR`), else the fewstep cache (hub folders: the Hugging
    Face cache)."""
    found = find_local(wf, weights_dir)
    if found is not None:
        if wf.sha256:  # a known release hash: a corrupt or wrong local file is named, not loaded
            verify_sha256(found, wf.sha256)
        return found
    reason = "no download source is known for it"
    if wf.bundled:
        reason = "it is bundled with fewstep"
    elif wf.hub_repo and download and not offline():
        try:
            from huggingface_hub import snapshot_download

            if into is not None:
                return Path(snapshot_download(wf.hub_repo, local_dir=Path(into) / wf.filename))
            return Path(snapshot_download(wf.hub_repo))
        except Exception as e:  # network and hub errors of all kinds
            reason = f"download of {wf.hub_repo} failed ({e.__class__.__name__}: {str(e).splitlines()[0][:200]})"
    elif wf.url and download and not offline():
        try:
            return download_file(wf, Path(into) if into is not None else cache_dir(), quiet=quiet)
        except (urllib.error.URLError, http.client.HTTPException, OSError, TimeoutError) as e:
            reason = f"download from {wf.url} failed ({e.__class__.__name__}: {e})"
    elif wf.url or wf.hub_repo:
        reason = "not downloaded: offline (FEWSTEP_OFFLINE/HF_HUB_OFFLINE)"
    raise WeightsNotFoundError(f"weights not found: {missing_line(wf, weights_dir)}; {reason}")


def download_file(wf: WeightFile, folder: Path, *, quiet: bool = False, timeout: float = 30.0) -> Path:
    """Download `wf.url` to `folder/wf.filename` via a `.part` file; verify size and sha256 when known.

    Hand-written on urllib (no extra dependency): the checks that matter are the byte count
    (servers that hang up early) and the hash; a failed download leaves no file behind."""
    from tqdm import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    final = folder / wf.filename
    part = folder / (wf.filename + ".part")
    digest = hashlib.sha256()
    received = 0
    total = None
    try:
        with urllib.request.urlopen(wf.url, timeout=timeout) as response, open(part, "wb") as fh:
            total = int(response.headers.get("Content-Length") or 0) or wf.size
            with tqdm(total=total, unit="B", unit_scale=True, desc=wf.filename, disable=quiet) as bar:
                while chunk := response.read(1 << 20):
                    fh.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except http.client.IncompleteRead:
        pass  # reported below with the byte counts
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    if total is not None and received != total:
        part.unlink(missing_ok=True)
        raise OSError(f"incomplete download of {wf.filename}: {received} of {total} bytes")
    if wf.sha256 and digest.hexdigest() != wf.sha256:
        part.unlink(missing_ok=True)
        raise OSError(f"checksum mismatch for {wf.filename} (sha256 {digest.hexdigest()}, expected {wf.sha256})")
    os.replace(part, final)
    return final


# ------------------------------------------------------------------------------ integrity
# Hashes already verified, keyed by real path with the file's size and mtime: a 100 MB-1 GB weight
# file is hashed once, not on every run. A changed size or mtime means hashing again. (This guards
# against corruption and swapped files, not against someone forging both content and mtime.)


def _verified_cache() -> Path:
    return fewstep_home() / "verified_sha256.json"


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """The sha256 of a file, read in chunks (weights are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: str | Path, expected: str) -> None:
    """Raise FewstepError("PATH: sha256 mismatch ...") unless the file's sha256 is `expected`."""
    import json

    from .errors import FewstepError

    p = Path(path)
    try:
        st = p.stat()
    except OSError as e:
        raise FewstepError(f"{p}: cannot read weight file ({e.strerror or e})") from None
    key, expected = os.path.realpath(p), expected.strip().lower()
    cache_file = _verified_cache()
    try:
        cache = json.loads(cache_file.read_text())
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    hit = cache.get(key)
    if isinstance(hit, dict) and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns \
            and hit.get("sha256") == expected:
        return
    actual = sha256_file(p)
    if actual != expected:
        raise FewstepError(f"{p}: sha256 mismatch (expected {expected[:16]}..., file has {actual[:16]}...): "
                           "the file is corrupt or not the released one; restore or download it again")
    cache[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": actual}
    try:  # the cache is an optimisation: a read-only home just means hashing again next time
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=0, sort_keys=True))
        os.replace(tmp, cache_file)
    except OSError:
        pass
