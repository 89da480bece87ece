"""`localrun pull`: a model from Hugging Face or ModelScope into the store, verified.

`pull` takes a hub reference (store.reference: `hf.co/ORG/REPO[:TAG]`, `modelscope.cn/...`),
typed or a catalog entry's source (sources.obtain pulls that under the catalog's name). TAG
picks the GGUF (`sources.base.pick`). Each file goes through these steps:

1. skipped if a blob with the hub's sha256 is already in the store (nothing is transferred);
2. downloaded by the hub's library into `partial/<sha256>/` inside the store, where an
   interrupted download is resumed next time; a file lock keeps two pulls of the same file from
   writing it at once;
3. hashed and compared with the hub's own sha256 (huggingface_hub alone checks only sizes): a
   mismatch deletes the download and fails;
4. renamed into `blobs/` (same file system: no second copy) and checked as GGUF.

The manifest is written last. Free disk space is checked before anything is fetched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from localrun.errors import DiskFullError, DownloadError, InvalidGGUFError
from localrun.gguf import scan
from localrun.gguf.header import Header
from localrun.recipes import params
from localrun.recipes.create import Event, Reporter
from localrun.sources import partial, present
from localrun.sources.base import Choice, Hub, RemoteFile, Repo, pick
from localrun.store.blobs import hash_file
from localrun.store.local import Store
from localrun.store.manifest import MEDIA_CONFIG, MEDIA_TYPES, Layer, Manifest
from localrun.store.names import ModelName
from localrun.store.reference import HubReference

DISK_MARGIN = 256 * 1024 * 1024


def hub_for(name: str) -> Hub:
    if name == "hf":
        from localrun.sources.hf import HuggingFaceHub

        return HuggingFaceHub()
    from localrun.sources.modelscope import ModelScopeHub

    return ModelScopeHub()


def pull(
    store: Store,
    ref: HubReference,
    *,
    report: Reporter = lambda _: None,
    target: ModelName | None = None,
    expected: dict[str, str] | None = None,
    parameters: dict[str, Any] | None = None,
    hubs: Callable[[str], Hub] = hub_for,
) -> str:
    """Pull `ref` into the store as `target` (default: its own name); returns the manifest digest.

    `expected` maps a file name to the sha256 it must have (catalog sources pin their files);
    `parameters` are the catalog's defaults for the model, over what the repository's
    generation_config.json recommends.
    """
    name = target or ref.name
    hub = hubs(ref.hub)
    report(Event("pulling manifest"))
    repo = hub.repo(ref.repo_id)
    choice = pick(repo, ref.tag, ref.text)
    for file in choice.files:
        pinned = (expected or {}).get(file.path.rsplit("/", 1)[-1])
        if pinned and file.sha256 and pinned != file.sha256:
            raise DownloadError(
                f"{ref.text}: {file.path} on the hub is not the file localrun's catalog expects",
                hint="the repository changed; pull it by its hub name instead",
            )
    wanted = ["sha256:" + f.sha256 if f.sha256 else None for f in choice.files]
    projector = choice.projector
    wanted_projector = ["sha256:" + projector.sha256] if projector and projector.sha256 else []
    with contextlib.suppress(Exception):
        current = store.read_manifest(name)
        held = [layer.digest for layer in current.of_kind("projector")]
        if (
            [layer.digest for layer in current.of_kind("model")] == wanted
            and (held == wanted_projector or projector is None)
            and all(store.has_blob(d) for d in current.digests())
        ):
            return present.tell(store, name, report, pulling_manifest=False)
    with store.writing():
        _check_space(store, choice)
        layers = [_fetch(store, hub, repo, f, report) for f in choice.files]
        headers = [scan.scan(store.blob_path(layer.digest)) for layer in layers]
        config = _config(repo, choice, headers)
        extra: list[Layer] = []
        if projector is not None:
            extra.append(_fetch_projector(store, hub, repo, projector, report, config))
        license_text = repo.license or headers[0].metadata.get("general.license")
        if isinstance(license_text, str) and license_text:
            digest, size = store.add_bytes(license_text.encode())
            extra.append(Layer(MEDIA_TYPES["license"], digest, size))
        defaults = {**_parameters(_generation_config(store, hub, repo)), **(parameters or {})}
        if defaults:
            data = json.dumps(defaults, sort_keys=True).encode()
            digest, size = store.add_bytes(data)
            extra.append(Layer(MEDIA_TYPES["params"], digest, size))
        config_digest, config_size = store.add_bytes(json.dumps(config, sort_keys=True).encode())
        manifest = Manifest(Layer(MEDIA_CONFIG, config_digest, config_size), layers + extra)
        report(Event("writing manifest"))
        digest = store.write_manifest(name, manifest)
    report(Event("success", digest=digest))
    return digest


def _fetch_projector(
    store: Store, hub: Hub, repo: Repo, f: RemoteFile, report: Reporter, config: dict[str, Any]
) -> Layer:
    """The repository's projector into the store, checked as one, and recorded in `config`."""
    layer = _fetch(store, hub, repo, f, report, kind="projector")
    details = scan.header_details([scan.scan(store.blob_path(layer.digest))])
    if details["kind"] != "projector":
        raise InvalidGGUFError(
            f"{f.path} from {repo.repo_id} is not a projector (mmproj)",
            hint="pull a file of the repository by its name (hf.co/ORG/REPO:FILE)",
        )
    config["projector"] = {"digest": layer.digest, "details": details}
    config["source"]["projector"] = f.path
    return layer


def _check_space(store: Store, choice: Choice) -> None:
    needed = 0
    for f in choice.files:
        if f.sha256 and store.has_blob("sha256:" + f.sha256):
            continue
        needed += max(f.size - _partial_bytes(store, f), 0)
    if not needed:
        return
    free = shutil.disk_usage(store.root).free
    if free < needed + DISK_MARGIN:
        raise DiskFullError(
            f"the download needs {needed / 1e9:.1f} GB but {store.root} has "
            f"{free / 1e9:.1f} GB free",
            hint="free some space (`localrun prune` removes unused blobs) or move the store "
            "with LOCALRUN_MODELS",
        )


def _partial_dir(store: Store, f: RemoteFile) -> Path:
    key = f.sha256 or hashlib.sha256(f.path.encode()).hexdigest()
    return store.root / "partial" / key


def _partial_bytes(store: Store, f: RemoteFile) -> int:
    folder = _partial_dir(store, f)
    if not folder.is_dir():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _fetch(
    store: Store, hub: Hub, repo: Repo, f: RemoteFile, report: Reporter, *, kind: str = "model"
) -> Layer:
    """One file into the store (or found there); returns its layer (a model's, or `kind`)."""
    label = f.path.rsplit("/", 1)[-1]
    if f.sha256 and store.has_blob("sha256:" + f.sha256):
        report(Event(f"{label}: already present", digest="sha256:" + f.sha256))
        return Layer(MEDIA_TYPES[kind], "sha256:" + f.sha256, f.size)
    folder = _partial_dir(store, f)
    # Two pulls of the same file: the second waits, then finds the blob in place.
    with partial.claim(folder):
        if f.sha256 and store.has_blob("sha256:" + f.sha256):
            report(Event(f"{label}: already present", digest="sha256:" + f.sha256))
            return Layer(MEDIA_TYPES[kind], "sha256:" + f.sha256, f.size)
        folder.mkdir(parents=True, exist_ok=True)

        def progress(done: int, total: int) -> None:
            report(Event(f"pulling {label}", completed=done, total=total or f.size))

        try:
            path, digest = hub.download(repo, f, folder, progress)
        except OSError as exc:
            raise DownloadError(f"{label}: {exc}") from exc
        synced = digest is not None  # hashed (and fsynced) on the way by the hub
        if digest is None:
            report(Event(f"verifying sha256 of {label}"))
            digest = hash_file(path)
        if f.sha256 and digest != "sha256:" + f.sha256:
            shutil.rmtree(folder, ignore_errors=True)
            raise DownloadError(
                f"{label}: the server sent different bytes than the hub lists "
                f"({digest} instead of sha256:{f.sha256}); the download was deleted",
                hint="pull again; if it repeats, the server or mirror (HF_ENDPOINT) is damaged",
            )
        try:
            scan.scan(path)
        except InvalidGGUFError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            raise InvalidGGUFError(
                f"{label} from {repo.repo_id} is not a valid GGUF file ({exc.message})"
            ) from None
        size = store.adopt(path, digest, synced=synced)
        shutil.rmtree(folder, ignore_errors=True)
    return Layer(MEDIA_TYPES[kind], digest, size)


def _config(repo: Repo, choice: Choice, headers: list[Header]) -> dict[str, Any]:
    details = scan.header_details(headers)
    config: dict[str, Any] = {
        "model_format": "gguf",
        "details": details,
        "parent": None,
        "source": {
            "hub": repo.hub,
            "repo": repo.repo_id,
            "revision": repo.revision,
            "files": [f.path for f in choice.files],
            "quantization": choice.quant,
        },
    }
    config.update(gguf_texts(headers[0]))
    return config


def gguf_texts(header: Header) -> dict[str, str]:
    """What a model's config keeps of its GGUF's own texts: its chat template and license."""
    texts = {}
    for key, field in (("gguf_chat_template", "tokenizer.chat_template"),
                       ("gguf_license", "general.license")):  # fmt: skip
        value = header.metadata.get(field)
        if isinstance(value, str):
            texts[key] = value
    return texts


# generation_config.json keys -> localrun parameters
_GENERATION_KEYS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repeat_penalty",
}


def _generation_config(store: Store, hub: Hub, repo: Repo) -> dict[str, Any]:
    """The repository's generation_config.json, if it has one (small; never kept)."""
    found = [f for f in repo.files if f.path == "generation_config.json" and f.size < 1_000_000]
    if not found:
        return {}
    folder = store.root / "partial" / f"generation-config-{os.getpid()}"
    try:
        path, _ = hub.download(repo, found[0], folder, lambda done, total: None)
        data = json.loads(path.read_text(encoding="utf-8"))
    except Exception:  # recommended defaults are a nicety: a pull never fails for them
        return {}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return data if isinstance(data, dict) else {}


def _parameters(config: dict[str, Any]) -> dict[str, Any]:
    """Default parameters a generation_config.json recommends, mapped and validated."""
    out: dict[str, Any] = {}
    for key, name in _GENERATION_KEYS.items():
        value = config.get(key)
        if value is None:
            continue
        try:
            out[name] = params.SPECS[name].check(value)
        except Exception:  # a value outside our ranges is ignored, not fatal
            continue
    return out
