"""The content-addressed model store: blobs by sha256, manifests by model name.

Layout under the store root (LOCALRUN_MODELS):

    blobs/sha256-<64 hex>                  content, named by its own digest
    blobs/.tmp-<pid>-<random>              a blob being written (stale after a crash)
    links/sha256-<64 hex>                  a blob linked to a user's file: how, and its path
    manifests/<host>/<namespace>/<name>/<tag>   JSON: config + media-typed layers
    leases/<id>.json (and .lock)           blobs a runner holds (store.leases)
    .lock                                  the store's reader/writer lock

The rules that keep users' gigabytes safe are in the comment above Store. The manifest format
is localrun.store.manifest; the temporary files, fsyncs and hashing are localrun.store.blobs.
The store knows nothing of HTTP, hubs or llama.cpp.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localrun.errors import (
    CorruptBlobError,
    MissingBlobError,
    ModelNotFoundError,
    StoreError,
)
from localrun.store import leases, links
from localrun.store.blobs import (
    TMP_PREFIX,
    Progress,
    copy_hashed,
    fsync_dir,
    hash_fd,
    os_error,
    temp_path,
    unlink_quietly,
    write_atomic,
)
from localrun.store.manifest import DIGEST_RE, Manifest, check_digest
from localrun.store.names import ModelName
from localrun.store.verify import VerifyReport, rehash

SMALL_BLOB = 4 * 1024 * 1024  # small layers are re-hashed whenever they are read
# A blob uploaded over HTTP is referenced by no manifest until the /api/create that names it;
# prune leaves it alone this long (its marker in uploads/ says when it came).
UPLOAD_GRACE_S = 3600.0

PhasedProgress = Callable[[str, int, int], None]
"""Called with ("hashing" or "copying", bytes done, bytes total) while a file is added."""


@dataclass(frozen=True)
class Entry:
    """A model as `list` shows it."""

    name: ModelName
    digest: str  # of the manifest bytes
    size: int
    modified: float
    manifest: Manifest


@dataclass
class PruneReport:
    temp_files: int = 0
    partial_downloads: int = 0
    orphan_blobs: int = 0
    bytes_freed: int = 0


def _linked_status(source: Path, how: str | None) -> str:
    if how == "reflink":
        return f"linked {source} (a copy-on-write clone: no data copied)"
    if how == "hard link":
        return f"linked {source} (a hard link: no data copied; keep the file unchanged)"
    return f"copying {source}: it cannot be linked from here (another file system?)"


# Rules that keep users' gigabytes safe:
# - A digest is checked against `^sha256[:-][0-9a-f]{64}$` before any path is built from it, and
#   names are validated by `localrun.store.names`, so neither can point outside the store (the
#   class of Ollama's CVE-2024-37032).
# - A blob is hashed while it is written to a process-unique temporary file in the blobs folder,
#   fsynced and moved into place with os.replace: a blob file is complete or absent.
# - A manifest is written (atomically, the same way) only after all its blobs are in place.
# - Writers (create, cp), verify and leases hold the lock shared; rm, prune and the start-up
#   cleanup hold it exclusive. So garbage collection never sees a half-made model, nor deletes
#   what verify reads or what a runner holds (leases: blobs a replaced name no longer uses).
class Store:
    """A model store rooted at a folder; every method is safe against concurrent processes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.manifests = self.root / "manifests"

    @classmethod
    def default(cls) -> Store:
        from localrun.settings import config

        root = config.models_dir()
        if root.is_relative_to(config.home()):
            # The store's folders would make LOCALRUN_HOME: made first, its owner's alone. One
            # that cannot be made is _ensure_dirs' to report, as a store error.
            config.make_home()
        return cls(root)

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
            raise os_error(exc, f"cannot create the model store at {self.root}") from exc

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
            write_atomic(self.blob_path(digest), [data], sync_dir=True)
        return digest, len(data)

    def add_file(
        self,
        fd: int,
        *,
        expected: str | None = None,
        progress: PhasedProgress | None = None,
        on_status: Callable[[str, str], None] | None = None,
        link_from: Path | None = None,
    ) -> tuple[str, int, bool]:
        """Store the content of an open file; returns (digest, size, already_present).

        The file is hashed first, so content already in the store is never copied again; new
        content is hashed a second time while it is copied, and if the two hashes differ (the
        file changed under us) nothing is stored. With `link_from` (the open file's path), new
        content is linked in place of a copy where the file system allows (store.links).
        """
        before = os.fstat(fd)
        size = before.st_size
        digest = hash_fd(fd, size, (lambda d, t: progress("hashing", d, t)) if progress else None)
        if expected is not None and digest != check_digest(expected):
            raise CorruptBlobError(
                f"content has digest {digest}, expected {check_digest(expected)}",
                hint="the source file is damaged; fetch or reinstall it",
            )
        present = self.has_blob(digest) and not self._edited_link(digest, before)
        if on_status:
            on_status("using existing layer" if present else "creating new layer", digest)
        if not present:
            copying = (lambda d, t: progress("copying", d, t)) if progress else None
            how = self._link_in(fd, link_from, digest, before) if link_from else None
            if link_from and on_status:
                on_status(_linked_status(link_from, how), digest)
            if how is None:
                self._copy_in(fd, size, digest, copying)
        return digest, size, present

    def _edited_link(self, digest: str, source: os.stat_result) -> bool:
        """Return whether blob `digest` is a hard link of a user's file, edited in place since.

        Such a blob's content is no longer its digest, so it is dropped. The file being added,
        the same content put back, then takes its place rather than being taken for it. A blob
        that is the very file being added was just hashed, so it is not counted as edited.
        """
        path = self.blob_path(digest)
        if links.original(links.folder(self.root), path.name) is None:
            return False
        try:
            st = path.stat()
            if (st.st_dev, st.st_ino) == (source.st_dev, source.st_ino):
                return False
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return False
        try:
            edited = hash_fd(fd, st.st_size, None) != digest
        finally:
            os.close(fd)
        if edited:
            unlink_quietly(path)  # the store's name for it: the user's file is not touched
            unlink_quietly(links.folder(self.root) / path.name)
        return edited

    def _link_in(self, fd: int, source: Path, digest: str, before: os.stat_result) -> str | None:
        """Link the open file `source` in as blob `digest`, and say how.

        It returns "reflink" or "hard link", or None where neither can be made (the caller
        copies).
        """
        with self._new_blob("could not link the file into the model store") as tmp:
            how = links.link(fd, source, tmp, digest, before)
            if how is not None:
                links.record(links.folder(self.root), self.blob_path(digest).name, source, how)
                self._place(tmp, digest)
            return how

    def _copy_in(self, fd: int, size: int, digest: str, progress: Progress | None) -> None:
        """Copy an open file into place as blob `digest`, hashing it again on the way.

        A file that changed since it was hashed stores nothing.
        """
        with self._new_blob("could not write to the model store") as tmp:
            if copy_hashed(fd, tmp, size, progress) != digest:
                raise StoreError(
                    "the file changed while it was being copied; nothing was stored",
                    hint="run the command again once the file is complete",
                )
            self._place(tmp, digest)

    @contextlib.contextmanager
    def _new_blob(self, what: str) -> Iterator[Path]:
        """Yield a temporary name in the blobs folder for the block to fill and _place.

        Whatever the block leaves there (it failed, or placed nothing) is removed. An OSError
        is worded as `what`.
        """
        self._ensure_dirs()
        tmp = temp_path(self.blobs)
        try:
            yield tmp
        except OSError as exc:
            raise os_error(exc, what) from exc
        finally:
            unlink_quietly(tmp)  # gone already once placed

    def _place(self, tmp: Path, digest: str) -> None:
        os.replace(tmp, self.blob_path(digest))
        fsync_dir(self.blobs)

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
                self.hold(digest)
            os.replace(path, target)
            fsync_dir(self.blobs)
        except OSError as exc:
            raise os_error(exc, f"could not move {path.name} into the store") from exc
        return size

    def hold(self, digest: str) -> None:
        """Keep blob `digest` from prune for UPLOAD_GRACE_S, though no manifest names it yet.

        It serves an upload, and a pull's layers before the model is written.
        """
        marker = self.root / "uploads" / self.blob_path(digest).name
        marker.parent.mkdir(exist_ok=True)
        marker.touch()

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
            raise os_error(exc, f"cannot read blob {digest}") from exc
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
            raise os_error(exc, "could not write to the model store") from exc
        write_atomic(path, [raw], sync_dir=True)
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
            raise os_error(exc, f"cannot read the manifest of {name}") from exc
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
                fsync_dir(path.parent)
            except OSError as exc:
                raise os_error(exc, f"could not remove {name}") from exc
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
            # A download's lock file (partial/<key>.lock) is stale once the store is held
            # alone (downloads run as its writers): it goes whatever `partials` says.
            for lock in partial.glob("*.lock") if partial.is_dir() else ():
                with contextlib.suppress(OSError):
                    lock.unlink()
                    report.temp_files += 1
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

    def remove_temp_files(self, pid: int) -> int:
        """Remove the temporary files process `pid` left, and return how many.

        `pid` was a job stopped mid-write. Only that process's files go: another's may be being
        written.
        """
        mine = f"{TMP_PREFIX}{pid}-"
        removed = 0
        for path in self._temp_files():
            if path.name.startswith(mine):
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed += 1
        return removed

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
        used, leased = self._referenced(), leases.held(self.root)
        if used is None or leased is None or not self.blobs.is_dir():
            return report  # never delete blobs while a damaged manifest (or lease) may need them
        used |= self._fresh_uploads() | leased  # those a runner was admitted with, too
        for path in self.blobs.iterdir():
            if not DIGEST_RE.match(path.name):
                continue
            if check_digest(path.name) not in used:
                with contextlib.suppress(OSError):
                    # A blob linked to a user's file shares that file's data: only the store's
                    # name for it goes, and no space comes back unless it was the last name.
                    info = path.stat()
                    path.unlink()
                    report.orphan_blobs += 1
                    report.bytes_freed += info.st_size if info.st_nlink <= 1 else 0
        links.forget_missing(links.folder(self.root), self.blobs)
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
            return rehash(self, progress)
