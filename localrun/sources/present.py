"""A pull of a model the store already holds whole, told as Ollama tells one.

Ollama's pull of a model it has streams "pulling manifest", then for each layer (the config
last) "pulling <12 hex digits>" with its `digest` and `total`, `completed` equal to it, then
"verifying sha256 digest", "writing manifest" and "success"; its clients draw those (the ollama
CLI a bar a layer, ollama-python's examples a tqdm bar a digest). localrun tells the same steps
from the manifest it has, for every source it pulls from (a hub, a registry, the catalog).

What each step checks, cheaply: a layer's blob is there with the size its manifest gives (a
stat; a missing or cut blob is an error naming it). No blob is hashed again: each was hashed on
its way into the store (a download, an upload, create) and is named by that hash, as Ollama
skips verifying the blobs it had; `localrun verify` hashes the store again. The manifest is in
place already and is not rewritten (its time orders the model lists).
"""

from __future__ import annotations

import hashlib

from localrun.errors import CorruptBlobError, MissingBlobError
from localrun.recipes.create import Event, Reporter
from localrun.store.local import Store
from localrun.store.names import ModelName


def tell(store: Store, name: ModelName, report: Reporter, *, pulling_manifest: bool) -> str:
    """Report `name`, which the store holds, as Ollama reports the pull of a model it has.

    With `pulling_manifest` it reports the first step too, where the caller has not said it.
    Returns the manifest's digest.
    """
    if pulling_manifest:
        report(Event("pulling manifest"))
    manifest = store.read_manifest(name)
    for layer in [*manifest.layers, manifest.config]:
        try:
            size = store.blob_path(layer.digest).stat().st_size
        except OSError:
            raise MissingBlobError(
                f"{name}: blob {layer.digest} is not in the store",
                hint=f"remove the model (`localrun rm {name}`) and pull it again",
            ) from None
        if size != layer.size:
            raise CorruptBlobError(
                f"{name}: blob {layer.digest} is {size} bytes; its manifest says {layer.size}",
                hint=f"`localrun verify` checks every blob; `localrun rm {name}` and pull it again",
            )
        label = f"pulling {layer.digest.removeprefix('sha256:')[:12]}"
        report(Event(label, digest=layer.digest, total=layer.size, completed=layer.size))
    report(Event("verifying sha256 digest"))
    report(Event("writing manifest"))
    digest = "sha256:" + hashlib.sha256(manifest.to_bytes()).hexdigest()
    report(Event("success", digest=digest))
    return digest
