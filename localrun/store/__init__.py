"""The model store: blobs by sha256, manifests by model name, and the names that find them.

    names.py      the grammar of a model name (`[host/][namespace/]name[:tag]`), pure
    reference.py  what a user types, parsed once: hub reference, catalog alias, entry
    catalog.py    the short names localrun knows (catalog.json) and where their files come from
    manifest.py   the manifest format: digests and media-typed layers
    blobs.py      durable writes: a file in the store is complete or absent
    links.py      GGUF files kept in place (`create --link`)
    leases.py     blobs a runner holds, kept from garbage collection while it lives
    local.py      Store: the local store's manifests and blobs on disk, locks, garbage collection
    verify.py     every blob hashed again, and what that says of the models using it

Knows nothing of HTTP, hubs or llama.cpp; imports only errors, settings, private and gguf.
Fetching what the store lacks is sources/'s; building a model from a Modelfile is recipes/'.
"""
