"""Share what the commands need below any output: the store they open, and an error's one line.

The chat prints errors and goes on; `main` prints one and exits.
"""

from __future__ import annotations

import contextlib
import sys
from typing import TYPE_CHECKING

from localrun.errors import ContextOverflowError, LocalrunError

if TYPE_CHECKING:
    from localrun.store.local import Store


def open_store(*, cleanup: bool = False) -> Store:
    """The store of LOCALRUN_MODELS; with `cleanup`, clear leftovers of crashed writers if idle."""
    # Imported here: `localrun --help` (and every command module importing this one) would
    # otherwise load the store's modules at start.
    from localrun.store.local import Store

    store = Store.default()
    if cleanup:
        store.prune(blocking=False)
    return store


def error_line(err: LocalrunError) -> str:
    """The one line a user sees for an error: what went wrong, then what to do."""
    message = " ".join(err.message.split()) if "\n" in err.message else err.message
    hint = err.hint
    if isinstance(err, ContextOverflowError) and err.tokens is not None:
        from localrun.request import overflow

        hint = overflow.hint(err, "cli")  # this command's own ways to raise the context
    return f"Error: {message}; {hint}" if hint else f"Error: {message}"


def print_error(err: LocalrunError) -> None:
    from localrun.store import catalog

    with contextlib.suppress(LocalrunError):  # a store that cannot open suggests nothing
        err = catalog.suggest(err, open_store())
    print(error_line(err), file=sys.stderr, flush=True)
