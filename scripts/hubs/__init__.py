"""The hubs and registries localrun pulls from, served on loopback, for the tests and the scripts
both (no hub is reachable from the machines that run them): `hfhub` (FakeHub, the Hugging Face
Hub's API as huggingface_hub reads it) and `registries` (an OCI registry as registry.ollama.ai
serves it, and the distribution project's where they differ). tests/support/mshub.py and
tests/support/proxy.py build on them there.
"""

from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback port nothing listens on (bound, then closed): for a closed port to be refused
    by, or a port to give a program that takes no 0."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
