"""The content-addressed model store: blobs by sha256, manifests by model name.

Layout under the store root (LOCALRUN_MODELS):

    blobs/sha256-<64 hex>                  content, named by its own digest
    blobs/.tmp-<pid>-<random>              a blob being written (stale after a crash)
    manifests/<host>/<namespace>/<name>/<tag>   JSON: config + media-typed layers
    .lock                                  the store's reader/writer lock

Rules that keep users' gigabytes safe:
- A digest is checked against `^sha256[:-][0-9a-f]{64}$` before any path is built from it, and
  names are validated by `localrun.names`, so neither can point outside the store (the class of
  Ollama's CVE-2024-37032).
- A blob is hashed while it is written to a process-unique temporary file in the blobs folder,
  fsynced and moved into place with os.replace: a blob file is complete or absent.
- A manifest is written (atomically, the same way) only after all its blobs are in place.
- Writers (create, cp) and verify hold the lock shared; rm, prune and the start-up cleanup hold
  it exclusive, so garbage collection never sees a half-made model nor deletes what verify reads.

Knows nothing of HTTP, hubs or llama.cpp.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localrun.errors import (
    CorruptBlobError,
    DiskFullError,
    InvalidDigestError,
    MissingBlobError,
    ModelNotFoundError,
    StoreError,
)
from localrun.names import ModelName

# \Z, not $: "$" also matches before a trailing newline, which would then end up in a path.
DIGEST_RE = re.compile(r"^sha256[:-][0-9a-f]{64}\Z")
TMP_PREFIX = ".tmp-"
CHUNK = 4 * 1024 * 1024
SMALL_BLOB = 4 * 1024 * 1024  # small layers are re-hashed whenever they are read
# A blob uploaded over HTTP is referenced by no manifest until the /api/create that names it;
# prune leaves it alone this long (its marker in uploads/ says when it came).
UPLOAD_GRACE_S = 3600.0

MEDIA_PREFIX = "application/vnd.localrun."
MEDIA_MANIFEST = MEDIA_PREFIX + "manifest.v1+json"
MEDIA_CONFIG = MEDIA_PREFIX + "config.v1+json"
LAYER_KINDS = ("model", "adapter", "draft", "params", "template", "system", "messages", "license")
MEDIA_TYPES = {kind: f"{MEDIA_PREFIX}{kind}" for kind in LAYER_KINDS}
_KIND_OF_MEDIA = {media: kind for kind, media in MEDIA_TYPES.items()}

Progress = Callable[[int, int], None]
"""Called with (bytes done, bytes total) while a large blob is hashed."""
PhasedProgress = Callable[[str, int, int], None]
"""Called with ("hashing" or "copying", bytes done, bytes total) while a file is added."""


def check_digest(digest: str) -> str:
    """Validate a digest and return it in the canonical `sha256:<hex>` form."""
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
        raise InvalidDigestError(
            f"invalid digest {str(digest)[:80]!r}: expected sha256:<64 lowercase hex digits>"
        )
    return "sha256:" + digest[7:]


@dataclass(frozen=True)
class Layer:
    """One blob of a model, with its media type."""

    media_type: str
    digest: str
    size: int

    @property
    def kind(self) -> str:
        return _KIND_OF_MEDIA.get(self.media_type, "unknown")

    def to_json(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}

    @staticmethod
    def from_json(data: Any) -> Layer:
        if not isinstance(data, dict):
            raise ValueError("a layer must be an object")
        media, digest, size = data.get("mediaType"), data.get("digest"), data.get("size")
        if not isinstance(media, str) or not isinstance(size, int) or size < 0:
            raise ValueError("a layer needs mediaType and a size")
        return Layer(media, check_digest(str(digest)), size)


@dataclass
class Manifest:
    """A model: its config blob and its layers, in order."""

    config: Layer
    layers: list[Layer] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        body = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": self.config.to_json(),
            "layers": [layer.to_json() for layer in self.layers],
        }
        return json.dumps(body, indent=2).encode() + b"\n"

    @staticmethod
    def from_bytes(raw: bytes) -> Manifest:
        try:
            data = json.loads(raw)
        except RecursionError:  # not a ValueError: callers would not expect it
            raise ValueError("the JSON is nested too deeply") from None
        if not isinstance(data, dict) or data.get("schemaVersion") != 2:
            raise ValueError("not a schemaVersion 2 manifest")
        layers = data.get("layers")
        if not isinstance(layers, list):
            raise ValueError("a manifest needs a list of layers")
        return Manifest(Layer.from_json(data.get("config")), [Layer.from_json(x) for x in layers])

    def digests(self) -> set[str]:
        return {self.config.digest, *(layer.digest for layer in self.layers)}

    @property
    def size(self) -> int:
        return self.config.size + sum(layer.size for layer in self.layers)

    def of_kind(self, kind: str) -> list[Layer]:
        return [layer for layer in self.layers if layer.kind == kind]


@dataclass(frozen=True)
class Entry:
    """A model as `list` shows it."""

    name: ModelName
    digest: str  # of the manifest bytes
    size: int
    modified: float
    manifest: Manifest


@dataclass
class VerifyReport:
    checked: int = 0
    corrupt: dict[str, list[str]] = field(default_factory=dict)  # digest -> models using it
    missing: dict[str, list[str]] = field(default_factory=dict)
    bad_manifests: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.corrupt or self.missing or self.bad_manifests)


@dataclass
class PruneReport:
    temp_files: int = 0
    partial_downloads: int = 0
    orphan_blobs: int = 0
    bytes_freed: int = 0


class Store:
    """A model store rooted at a folder; every method is safe against concurrent processes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.manifests = self.root / "manifests"

    @classmethod
    def default(cls) -> Store:
        from localrun import config

        return cls(config.models_dir())

    # -- locking ------------------------------------------------------------------------------

    def _lock(self) -> Any:
        from filelock import ReadWriteLock

        self._ensure_dirs()
        # One instance per use: threads of one process then wait for each other too.
        return ReadWriteLock(self.root / ".lock", is_singleton=False)

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the store for adding blobs and manifests (shared with other writers)."""
        lock = self._lock()
        with lock.read_lock():
            yield

    @contextlib.contextmanager
    def exclusive(self, *, blocking: bool = True) -> Iterator[bool]:
        """Hold the store alone (rm, prune); yields False if not blocking and it is busy."""
        from filelock import Timeout

        lock = self._lock()
        try:
            lock.acquire_write(timeout=-1 if blocking else 0, blocking=blocking)
        except Timeout:
            yield False
            return
        try:
            yield True
        finally:
            lock.release()

    def _ensure_dirs(self) -> None:
        try:
            self.blobs.mkdir(parents=True, exist_ok=True)
            self.manifests.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _os_error(exc, f"cannot create the model store at {self.root}") from exc

    # -- blobs --------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.blobs / check_digest(digest).replace(":", "-", 1)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def add_bytes(self, data: bytes) -> tuple[str, int]:
        """Store small content; returns (digest, size)."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not self.has_blob(digest):
            self._ensure_dirs()  # as add_file does: callers need not hold writing() first
            self._write_atomic(self.blob_path(digest), [data], sync_dir=True)
        return digest, len(data)

    def add_file(
        self,
        fd: int,
        *,
        expected: str | None = None,
        progress: PhasedProgress | None = None,
        on_status: Callable[[str, str], None] | None = None,
    ) -> tuple[str, int, bool]:
        """Store the content of an open file; returns (digest, size, already_present).

        The file is hashed first, so content already in the store is never copied again; new
        content is hashed a second time while it is copied, and if the two hashes differ (the
        file changed under us) nothing is stored.
        """
        size = os.fstat(fd).st_size
        digest = _hash_fd(fd, size, (lambda d, t: progress("hashing", d, t)) if progress else None)
        if expected is not None and digest != check_digest(expected):
            raise CorruptBlobError(
                f"content has digest {digest}, expected {check_digest(expected)}",
                hint="the source file is damaged; fetch or reinstall it",
            )
        if self.has_blob(digest):
            if on_status:
                on_status("using existing layer", digest)
            return digest, size, True
        if on_status:
            on_status("creating new layer", digest)
        self._ensure_dirs()
        tmp = self.blobs / f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(8)}"
        hasher = hashlib.sha256()
        done = 0
        last = 0.0
        try:
            out = os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644
            )
            try:
                os.lseek(fd, 0, os.SEEK_SET)
                while chunk := os.read(fd, CHUNK):
                    hasher.update(chunk)
                    _write_all(out, chunk)
                    done += len(chunk)
                    if progress and (time.monotonic() - last > 0.1 or done == size):
                        last = time.monotonic()
                        progress("copying", done, size)
                os.fsync(out)
            finally:
                os.close(out)
            copied = "sha256:" + hasher.hexdigest()
            if copied != digest:
                raise StoreError(
                    "the file changed while it was being copied; nothing was stored",
                    hint="run the command again once the file is complete",
                )
            os.replace(tmp, self.blob_path(digest))
            _fsync_dir(self.blobs)
        except OSError as exc:
            _unlink_quietly(tmp)
            raise _os_error(exc, "could not write to the model store") from exc
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return digest, size, False

    def adopt(
        self, path: Path, digest: str, *, synced: bool = False, uploaded: bool = False
    ) -> int:
        """Move a verified file (on the store's file system) into place as blob `digest`.

        The caller has hashed it; this is a rename, so a download is never copied twice. An
        `uploaded` blob is kept from prune for UPLOAD_GRACE_S, for the create that will use it.
        """
        target = self.blob_path(digest)
        self._ensure_dirs()
        try:
            size = path.stat().st_size
            if not synced:
                with open(path, "rb+") as fh:
                    os.fsync(fh.fileno())
            if uploaded:
                marker = self.root / "uploads" / target.name
                marker.parent.mkdir(exist_ok=True)
                marker.touch()
            os.replace(path, target)
            _fsync_dir(self.blobs)
        except OSError as exc:
            raise _os_error(exc, f"could not move {path.name} into the store") from exc
        return size

    def _fresh_uploads(self) -> set[str]:
        """Digests of blobs uploaded within UPLOAD_GRACE_S; older markers are removed."""
        fresh: set[str] = set()
        uploads = self.root / "uploads"
        if not uploads.is_dir():
            return fresh
        now = time.time()
        for marker in uploads.iterdir():
            with contextlib.suppress(OSError):
                if DIGEST_RE.match(marker.name) and now - marker.stat().st_mtime < UPLOAD_GRACE_S:
                    fresh.add(check_digest(marker.name))
                else:
                    marker.unlink()
        return fresh

    def read_blob(self, digest: str, *, limit: int = SMALL_BLOB) -> bytes:
        """Read a small blob, re-hashing it: a damaged blob is reported, never used."""
        path = self.blob_path(digest)
        try:
            with open(path, "rb") as fh:
                data = fh.read(limit + 1)
        except FileNotFoundError:
            raise MissingBlobError(
                f"blob {digest} is missing from the store",
                hint="run `localrun verify` to see which models are affected",
            ) from None
        except OSError as exc:
            raise _os_error(exc, f"cannot read blob {digest}") from exc
        if len(data) > limit:
            raise StoreError(f"blob {digest} is larger than expected for its kind")
        if "sha256:" + hashlib.sha256(data).hexdigest() != check_digest(digest):
            raise CorruptBlobError(
                f"blob {digest} is corrupt (its content no longer matches its digest)",
                hint="run `localrun verify`, then remove and recreate the affected models",
            )
        return data

    # -- manifests ----------------------------------------------------------------------------

    def manifest_path(self, name: ModelName) -> Path:
        return self.manifests.joinpath(*name.parts)

    def write_manifest(self, name: ModelName, manifest: Manifest) -> str:
        """Record `name` -> manifest once every blob it names is present; returns its digest."""
        for digest in manifest.digests():
            if not self.has_blob(digest):
                raise MissingBlobError(f"cannot write manifest: blob {digest} is not in the store")
        raw = manifest.to_bytes()
        path = self.manifest_path(name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _os_error(exc, "could not write to the model store") from exc
        self._write_atomic(path, [raw], sync_dir=True)
        return "sha256:" + hashlib.sha256(raw).hexdigest()

    def read_manifest(self, name: ModelName) -> Manifest:
        return self._load(name)[0]

    def _load(self, name: ModelName) -> tuple[Manifest, bytes, float]:
        path = self.manifest_path(name)
        try:
            raw = path.read_bytes()
            mtime = path.stat().st_mtime
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ModelNotFoundError(str(name)) from None
        except OSError as exc:
            raise _os_error(exc, f"cannot read the manifest of {name}") from exc
        try:
            return Manifest.from_bytes(raw), raw, mtime
        except (ValueError, StoreError) as exc:
            raise StoreError(
                f"the manifest of {name} is damaged ({exc})",
                hint=f"remove it with `localrun rm {name}` and create or pull it again",
            ) from None

    def exists(self, name: ModelName) -> bool:
        return self.manifest_path(name).is_file()

    def names(self) -> list[ModelName]:
        """Every model name with a manifest file (validated; stray files are ignored)."""
        found: list[ModelName] = []
        if not self.manifests.is_dir():
            return found
        for path in self.manifests.glob("*/*/*/*"):
            if not path.is_file() or path.name.startswith(TMP_PREFIX):
                continue
            rel = path.relative_to(self.manifests).parts
            try:
                found.append(ModelName(*rel))
            except Exception:  # not a name localrun would write: not ours, leave it alone
                continue
        return sorted(found)

    def entries(self) -> list[Entry]:
        out = []
        for name in self.names():
            try:
                manifest, raw, mtime = self._load(name)
            except (ModelNotFoundError, StoreError):
                continue
            digest = "sha256:" + hashlib.sha256(raw).hexdigest()
            out.append(Entry(name, digest, manifest.size, mtime, manifest))
        return out

    def copy(self, src: ModelName, dst: ModelName) -> None:
        with self.writing():
            manifest = self.read_manifest(src)
            self.write_manifest(dst, manifest)

    def remove(self, name: ModelName) -> int:
        """Delete a model and every blob no other model uses; returns the bytes freed."""
        with self.exclusive():
            # Raises ModelNotFoundError; a damaged manifest can still be removed (its error
            # message tells the user to).
            with contextlib.suppress(StoreError):
                self.read_manifest(name)
            path = self.manifest_path(name)
            try:
                path.unlink()
                _fsync_dir(path.parent)
            except OSError as exc:
                raise _os_error(exc, f"could not remove {name}") from exc
            self._remove_empty_dirs(path.parent)
            return self._collect_orphans().bytes_freed

    # -- maintenance --------------------------------------------------------------------------

    def prune(self, *, blocking: bool = True, partials: bool = False) -> PruneReport | None:
        """Remove stale temporary files and blobs no manifest uses; None if the store is busy.

        `partials` also removes interrupted downloads (`partial/`), which a later pull would
        otherwise resume; the automatic clean-up keeps them.
        """
        if not self.root.is_dir():
            return PruneReport()
        with self.exclusive(blocking=blocking) as held:
            if not held:
                return None
            report = self._collect_orphans()
            partial = self.root / "partial"
            if partials and partial.is_dir():
                for entry in partial.iterdir():
                    size = (
                        sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())
                        if (entry.is_dir())
                        else entry.stat().st_size
                    )
                    if entry.is_dir():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)
                    report.partial_downloads += 1
                    report.bytes_freed += size
            for path in self._temp_files():
                with contextlib.suppress(OSError):
                    report.bytes_freed += path.stat().st_size
                    path.unlink()
                    report.temp_files += 1
            return report

    def _temp_files(self) -> list[Path]:
        dirs = [self.blobs, *(p.parent for p in self.manifests.glob("*/*/*/*"))]
        return [p for d in dirs if d.is_dir() for p in d.glob(TMP_PREFIX + "*")]

    def _referenced(self) -> set[str] | None:
        """Digests used by any manifest; None if some manifest cannot be read (then GC stops)."""
        used: set[str] = set()
        for name in self.names():
            try:
                used |= self.read_manifest(name).digests()
            except StoreError:
                return None
        return used

    def _collect_orphans(self) -> PruneReport:
        report = PruneReport()
        used = self._referenced()
        if used is None or not self.blobs.is_dir():
            return report  # never delete blobs while a damaged manifest might still need them
        used |= self._fresh_uploads()
        for path in self.blobs.iterdir():
            if not DIGEST_RE.match(path.name):
                continue
            if check_digest(path.name) not in used:
                with contextlib.suppress(OSError):
                    size = path.stat().st_size
                    path.unlink()
                    report.orphan_blobs += 1
                    report.bytes_freed += size
        return report

    def _remove_empty_dirs(self, start: Path) -> None:
        path = start
        while path != self.manifests and self.manifests in path.parents:
            try:
                path.rmdir()
            except OSError:
                return
            path = path.parent

    def verify(self, progress: Callable[[str, int, int], None] | None = None) -> VerifyReport:
        """Re-hash every blob; report corrupt and missing blobs with the models they affect."""
        if not self.root.is_dir():
            return VerifyReport()
        # Held shared, like a writer: a concurrent rm or prune would otherwise delete files
        # between the listing and the hashing (a crash, or blobs reported missing).
        with self.writing():
            return self._verify(progress)

    def _verify(self, progress: Callable[[str, int, int], None] | None) -> VerifyReport:
        report = VerifyReport()
        users: dict[str, list[str]] = {}
        for name in self.names():
            try:
                manifest = self.read_manifest(name)
            except StoreError:
                report.bad_manifests.append(str(name))
                continue
            for digest in manifest.digests():
                users.setdefault(digest, []).append(str(name))
        blobs = (
            sorted(p for p in self.blobs.iterdir() if DIGEST_RE.match(p.name))
            if (self.blobs.is_dir())
            else []
        )
        present = set()
        for path in blobs:
            digest = check_digest(path.name)
            present.add(digest)
            size = path.stat().st_size

            def tick(done: int, total: int, digest: str = digest) -> None:
                if progress:
                    progress(digest, done, total)

            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                report.corrupt[digest] = users.get(digest, [])
                continue
            try:
                actual = _hash_fd(fd, size, tick)
            finally:
                os.close(fd)
            report.checked += 1
            if actual != digest:
                report.corrupt[digest] = users.get(digest, [])
        for digest, models in users.items():
            if digest not in present:
                report.missing[digest] = models
        return report

    # -- helpers ------------------------------------------------------------------------------

    def _write_atomic(self, path: Path, chunks: list[bytes], *, sync_dir: bool) -> None:
        tmp = path.parent / f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(8)}"
        try:
            fd = os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644
            )
            try:
                for chunk in chunks:
                    _write_all(fd, chunk)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            if sync_dir:
                _fsync_dir(path.parent)
        except OSError as exc:
            _unlink_quietly(tmp)
            raise _os_error(exc, "could not write to the model store") from exc


def hash_file(path: Path) -> str:
    """The digest ('sha256:<hex>') of a file's content."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return _hash_fd(fd, os.fstat(fd).st_size, None)
    finally:
        os.close(fd)


def _hash_fd(fd: int, size: int, progress: Progress | None) -> str:
    hasher = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    done = 0
    last = 0.0
    while chunk := os.read(fd, CHUNK):
        hasher.update(chunk)
        done += len(chunk)
        if progress and (time.monotonic() - last > 0.1 or done == size):
            last = time.monotonic()
            progress(done, size)
    return "sha256:" + hasher.hexdigest()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; not possible (nor needed) on Windows.
    if os.name == "nt":
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _os_error(exc: OSError, what: str) -> StoreError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return DiskFullError(
            f"{what}: no space left on the device",
            hint="free some disk space (`localrun prune` removes unused blobs) "
            "or move the store with LOCALRUN_MODELS",
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StoreError(
            f"{what}: permission denied ({exc.filename or ''})".replace(" ()", ""),
            hint="check the permissions of the store folder or set LOCALRUN_MODELS",
        )
    return StoreError(f"{what}: {exc.strerror or exc}")
