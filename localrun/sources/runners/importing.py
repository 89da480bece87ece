"""Models other runners already keep on this machine, found, and imported in place (linked).

    ollama      Ollama's store, each model under Ollama's name (sources.runners.ollama)
    hf          the Hugging Face cache (sources.runners.folders)
    lmstudio    LM Studio's models folder, with its per-model settings (sources.runners.lmstudio)
    llama.cpp   llama.cpp's download cache, flat or in the hub's layout (sources.runners.llamacpp)

`find(source)` lists what one source (or "all") holds, as `Found` items (sources.runners.found);
one that cannot be imported says why in `problem`. `adopt` imports one through `create --link`:
the files stay the other runner's, `rm` and `prune` remove only the store's names for them, and
`verify` says when one changed or went away (store.links). `absent` says where a source's folder
was looked for, and what moves it, when it is not there.

With LOCALRUN_OTHER_RUNNERS, `serve` lists the models these sources hold that the store does not
(`Index`), and a name among them is imported in place on first use (`named`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from localrun.errors import ConfigError, ImportSourceError, InvalidNameError, LocalrunError
from localrun.gguf import scan
from localrun.model import stored as model
from localrun.recipes import create, params
from localrun.settings import config
from localrun.sources.runners import folders, llamacpp, lmstudio
from localrun.sources.runners import ollama as ollama_store
from localrun.sources.runners.found import Found, refused
from localrun.store import links, names
from localrun.store.local import Store
from localrun.store.manifest import MEDIA_CONFIG, MEDIA_TYPES, Layer, Manifest

log = logging.getLogger("localrun.sources")

_FINDERS: dict[str, Callable[[], list[Found]]] = {
    "ollama": ollama_store.models,
    "hf": folders.hub_models,
    "lmstudio": lmstudio.models,
    "llama.cpp": llamacpp.models,
}
SOURCES = (*_FINDERS, "all")  # the names settings.parse.RUNNERS takes too, and "all"
_ROOTS: dict[str, Callable[[], Path]] = {
    "ollama": ollama_store.root,
    "hf": folders.hub_root,
    "lmstudio": lambda: lmstudio.models_folder(lmstudio.home()),
    "llama.cpp": llamacpp.root,
}
# How a user points localrun at another folder of each source (said when its folder is missing).
_MOVED_BY = {
    "ollama": "set OLLAMA_MODELS to the folder Ollama keeps its models in",
    "hf": "set HF_HUB_CACHE (or HF_HOME) to the Hugging Face cache",
    "lmstudio": f"LM Studio's home is the folder ~/{lmstudio.POINTER} names, else ~/.lmstudio "
    "(its settings.json's downloadsFolder moves the models)",
    "llama.cpp": "set LLAMA_CACHE to llama.cpp's cache folder",
}


def find(source: str) -> list[Found]:
    """List the models of one source or of "all"; a name found twice is listed once.

    The importable one is kept: `hf` and `llama.cpp` may read the same hub cache.
    """
    found: list[Found] = []
    for name in list(_FINDERS) if source == "all" else [source]:
        try:
            found += _FINDERS[name]()
        except (OSError, RecursionError, KeyError, TypeError, ValueError) as exc:
            # Its folder cannot be read at all, or holds what no check foresaw: one row says so.
            found.append(refused(name, _ROOTS[name](), name, f"cannot read its folder: {exc}"))
    unique: dict[str, Found] = {}
    for item in found:
        held = unique.get(item.name)
        if held is None or (held.modelfile is None and item.modelfile is not None):
            unique[item.name] = item
    return list(unique.values())


def folder(source: str) -> Path:
    """The folder one source reads (not "all")."""
    return _ROOTS[source]()


def absent(source: str) -> ImportSourceError | None:
    """Return the error that says where `source` was looked for, or None when its folder is there.

    The error's hint says how to point localrun elsewhere.
    """
    where = folder(source)
    try:
        if where.is_dir():
            return None
    except OSError:  # there but unreadable: find() lists the reason
        return None
    return ImportSourceError(f"no {source} models: {where} does not exist", hint=_MOVED_BY[source])


def store_name(found: Found) -> str | None:
    """The name `found` takes in the store (`llama3.2:latest`), None where it cannot take one."""
    try:
        return str(names.parse(found.name))
    except InvalidNameError:
        return None


def named(name: str) -> Found | None:
    """Return the importable model of another runner that takes store name `name`, or None.

    It looks in the sources LOCALRUN_OTHER_RUNNERS names, and finds None when it names none.
    sources.obtain asks it when the store has no such model.
    """
    for source in config.other_runners():
        for found in find(source):
            if found.modelfile is not None and store_name(found) == name:
                return found
    return None


def adopt(store: Store, found: Found, report: create.Reporter = lambda _: None) -> str:
    """Import `found` in place (`create --link`); returns the manifest digest.

    A split model is made FROM its parts, linked in as a model under its own name (the form
    `show --modelfile` gives a split model), with its projector and settings as a file's.
    """
    if found.modelfile is None:
        raise ImportSourceError(f"{found.name}: {found.problem}")
    name = names.parse(found.name)
    if len(found.parts) <= 1:
        return create.create(store, name, found.modelfile, found.location.parent,
                             report=report, expected=found.digests, link=True)  # fmt: skip
    modelfile = dataclasses.replace(found.modelfile, from_=str(name))

    def find_base(wanted: names.ModelName) -> Manifest:
        # Called by create with the store held: the parts are linked in under its lock.
        if wanted != name:
            return store.read_manifest(wanted)
        return _parts(store, found, report)

    # FROM is a name: nothing may be taken for a relative path, so build from an empty folder.
    with tempfile.TemporaryDirectory(prefix="localrun-import-") as empty:
        return create.create(store, name, modelfile, Path(empty), report=report,
                             find_base=find_base, expected=found.digests, link=True)  # fmt: skip


def held(store: Store, found: Found) -> bool:
    """Whether the store holds `found` as importing it would leave it, told without reading files.

    That is a model of its name made of the same files, with the same template, system prompt,
    parameters, messages and licenses. The files are known by the digests its source names,
    else by the link records of the blobs linked from them, unchanged since. A runner's update
    (a new blob, a new snapshot, new settings) makes it not held, so importing again takes it
    and points the model at the new files; `import` skips a model that is held.
    """
    name = store_name(found)
    if found.modelfile is None or name is None:
        return False
    try:
        stored = model.load(store, names.parse(name))
    except (LocalrunError, ValueError):  # not there, or damaged: importing again mends it
        return False
    mf = found.modelfile
    kept = (stored.template, stored.system, stored.messages, stored.licenses, stored.parameters)
    taken = (mf.template, mf.system, mf.messages, mf.licenses, params.merge({}, mf.parameters))
    if kept != taken:
        return False
    named = [*(map(str, found.parts) if found.parts else [mf.from_]), *mf.adapters, mf.projector]
    files = [Path(p) for p in named if p]
    layers = [x for x in stored.manifest.layers if x.kind in ("model", "adapter", "projector")]
    records = links.folder(store.root)
    linked = {}  # the user's file (resolved) -> the blob linked from it, while it is that file
    for layer in layers:
        blob = store.blob_path(layer.digest)
        record = links.recorded(records, blob.name)
        if record is not None and links.drifted(records, blob) is None:
            linked[record[1]] = layer.digest
    wanted = [found.digests.get(str(f)) or linked.get(str(f.resolve())) for f in files]
    if None in wanted:  # a file whose content is not known without hashing it
        return False
    return sorted(map(str, wanted)) == sorted(x.digest for x in layers) and all(
        store.has_blob(d) for d in stored.manifest.digests()
    )


def _parts(store: Store, found: Found, report: create.Reporter) -> Manifest:
    """Link a split model's parts into the store, each checked as GGUF, and return a manifest.

    The manifest lists them as model layers and is written under no name: create writes the
    model's.
    """
    layers, headers = [], []
    for part in found.parts:
        fd = scan.open_regular(part)
        try:
            headers.append(scan.scan_fd(fd, str(part)))
            digest, size, _ = store.add_file(
                fd,
                expected=found.digests.get(str(part)),
                progress=lambda phase, done, total: report(
                    create.Event(f"{phase} model data", completed=done, total=total)
                ),
                on_status=lambda status, digest: report(create.Event(status, digest=digest)),
                link_from=part,
            )
        finally:
            os.close(fd)
        layers.append(Layer(MEDIA_TYPES["model"], digest, size))
    settings = {"model_format": "gguf", "details": scan.header_details(headers)}
    for key, field in (("tokenizer.chat_template", "gguf_chat_template"),
                       ("general.license", "gguf_license")):  # fmt: skip
        value = headers[0].metadata.get(key)
        if isinstance(value, str):
            settings[field] = value
    digest, size = store.add_bytes(json.dumps(settings, sort_keys=True).encode())
    return Manifest(Layer(MEDIA_CONFIG, digest, size), layers)


# -- what `serve` lists ---------------------------------------------------------------------

# How old a listing of other runners' models may be. Their folders hold a few files a model but
# may hold hundreds of models (a hub cache), and a chat UI asks for /api/tags on every page.
TTL_S = 10.0
# A name missing from the listing rescans it, at most this often (a model pulled with Ollama a
# moment ago is found; a client asking for names that exist nowhere costs one scan a second).
RETRY_S = 1.0


@dataclasses.dataclass(frozen=True)
class Listed:
    """Another runner's model as `serve` lists it."""

    name: str  # its store name
    size: int
    modified: float  # the manifest's or the file's mtime
    source: str
    quantization: str


class Index:
    """The models of the sources LOCALRUN_OTHER_RUNNERS names, by store name.

    The setting is read at each call. One scan runs at a time, and is kept TTL_S seconds; a
    folder that cannot be read lists nothing. The scan runs outside the lock: while one is under
    way, a caller gets the last listing of the same sources at once. Only the first scan of a
    setting is waited for, so a slow folder never holds up the requests that list or name models.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._sources: tuple[str, ...] = ()
        self._at = -math.inf
        self._listed: dict[str, Listed] = {}
        self._scanning: threading.Event | None = None  # set when the scan under way ends

    def models(self) -> list[Listed]:
        """Every importable model found (blocking: call it in a thread)."""
        return list(self._scan(TTL_S).values())

    def beside(self, names: set[str]) -> list[Listed]:
        """The models found that the store does not hold under `names` (blocking)."""
        return [m for m in self._scan(TTL_S).values() if m.name not in names]

    def named(self, name: str) -> Listed | None:
        """The model that takes store name `name`, if one is found (blocking)."""
        found = self._scan(TTL_S).get(name)
        return found if found is not None else self._scan(RETRY_S).get(name)

    def _scan(self, most_age: float) -> dict[str, Listed]:
        try:
            sources = config.other_runners()
        except ConfigError as exc:  # `localrun env` says it too; the routes still answer
            log.warning("%s; other runners' models are not listed", exc)
            return {}
        if not sources:
            return {}
        with self._lock:
            same = self._sources == sources
            if same and self._clock() - self._at < most_age:
                return self._listed
            running = self._scanning
            if running is not None and same:
                return self._listed  # a scan is under way: the last listing meanwhile
            if running is None:
                self._scanning = threading.Event()
        if running is not None:  # another setting's scan is under way: wait for it, then scan
            running.wait()
            return self._scan(most_age)
        listed: dict[str, Listed] = {}
        try:
            for source in sources:
                for item in _scanned(source):
                    listed.setdefault(item.name, item)
        finally:
            with self._lock:
                done, self._scanning = self._scanning, None
                self._sources, self._at, self._listed = sources, self._clock(), listed
            assert done is not None
            done.set()
        return listed


def _scanned(source: str) -> list[Listed]:
    """What one source lists; whatever its folders hold, never an exception."""
    try:
        found = find(source)
    except Exception as exc:  # a route that lists models never fails for another's folder
        log.warning("cannot list %s's models: %s", source, exc)
        return []
    out = []
    for item in found:
        name = store_name(item) if item.modelfile is not None else None
        try:
            modified = item.location.stat().st_mtime
        except OSError:
            continue
        if name is not None:
            out.append(Listed(name, item.size, modified, item.source, item.quantization))
    return out
