"""TLS: the server's certificate and key, checked before it listens, and what clients trust.

`serve --tls-cert/--tls-key` (LOCALRUN_TLS_CERT/KEY) answers HTTPS only on its port. The pair
is checked here so that a mistake is one line before anything listens, not a traceback from
uvicorn: both files readable PEM, the key unencrypted (a server that starts unattended has
nobody to type a passphrase) and not readable by other users (as ssh and PostgreSQL insist; a
root-owned key may be readable by its group, as Debian's ssl-cert group reads it), and the key
the certificate's. Clients (`localrun run`, `ps`, the gateway's upstreams) verify the server's
certificate against the system's store, or LOCALRUN_CA_FILE.
"""

from __future__ import annotations

import os
import ssl
import stat
from pathlib import Path

from localrun.errors import ConfigError
from localrun.settings import config

_HINT = "pass --tls-cert and --tls-key (or LOCALRUN_TLS_CERT and LOCALRUN_TLS_KEY) PEM files"


def server_pair(cert: Path | None, key: Path | None) -> tuple[Path, Path] | None:
    """The checked (certificate, key) to serve HTTPS with, or None for plain HTTP."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        given = "--tls-cert" if cert is not None else "--tls-key"
        raise ConfigError(
            f"{given} needs its pair: HTTPS takes a certificate and its key", hint=_HINT
        )
    cert_text = _read(cert, "certificate")
    key_text = _read(key, "key")
    if "-----BEGIN CERTIFICATE-----" not in cert_text:
        raise ConfigError(f"{cert} is not a PEM certificate", hint=_HINT)
    if "PRIVATE KEY-----" not in key_text:
        hint = "the key is the file that begins with -----BEGIN PRIVATE KEY-----"
        raise ConfigError(f"{key} is not a PEM private key", hint=hint)
    if "ENCRYPTED" in key_text:
        raise ConfigError(
            f"the key {key} is encrypted: the server cannot ask for its passphrase",
            hint=f"write it unencrypted (openssl pkey -in {key} -out KEY) and chmod 600 it",
        )
    _check_private(key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(
                f"the key {key} is not the key of the certificate {cert}",
                hint="pass the key the certificate was made with",
            ) from None
        raise ConfigError(
            f"cannot use the certificate {cert} with the key {key}: {exc.reason or exc}",
            hint=_HINT,
        ) from None
    return cert, key


def _read(path: Path, what: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(1024 * 1024).decode("ascii", errors="replace")
    except FileNotFoundError:
        raise ConfigError(f"the TLS {what} {path} does not exist", hint=_HINT) from None
    except IsADirectoryError:
        raise ConfigError(f"the TLS {what} {path} is a folder, not a file", hint=_HINT) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read the TLS {what} {path}: {exc.strerror or exc}", hint=_HINT
        ) from None


def _check_private(key: Path) -> None:
    """Refuse a key that other users can read (or write)."""
    if os.name != "posix":
        return  # Windows grants access by ACL; the mode bits say nothing there
    info = key.stat()
    allowed = 0o640 if info.st_uid == 0 else 0o600
    extra = stat.S_IMODE(info.st_mode) & ~allowed & 0o077
    if extra:
        raise ConfigError(
            f"the key {key} can be read by other users (mode {stat.S_IMODE(info.st_mode):o})",
            hint=f"chmod 600 {key}",
        )


def client_context() -> ssl.SSLContext:
    """What a client trusts: LOCALRUN_CA_FILE's certificates, or the system's store."""
    ca_file = config.ca_file()
    try:
        return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
        raise ConfigError(
            f"cannot read LOCALRUN_CA_FILE {ca_file}: {reason}",
            hint="point it at a PEM file of the certificates to trust, or unset it",
        ) from None
