"""Choose the model `localrun run` talks to: the running server's, or one loaded in this process.

`open_session()` probes LOCALRUN_HOST. When a server answers, the model is loaded there and stays
warm between invocations; otherwise it is loaded here. A model the server lacks that another
runner here has is first imported in place into this store, as without a server. That needs
LOCALRUN_OTHER_RUNNERS in this command's environment. The remote path imports neither llama_cpp
nor the runner.
"""

from __future__ import annotations

from typing import Any

from localrun.cli.run.session import Session


def open_session(name: str, overrides: dict[str, Any]) -> Session:
    """The server's model when LOCALRUN_HOST answers, else the model loaded in this process."""
    from localrun.cli.client import Client

    client = Client()
    if client.is_up():
        from localrun.cli.run.remote import RemoteSession

        return RemoteSession.open(client, name, overrides)
    from localrun.cli.run.local import LocalSession

    return LocalSession.open(name, overrides)
