"""localrun's settings: every LOCALRUN_* variable, the settings file, TLS.

    config.py   every setting declared once (name, default, parser, help), read when used
    parse.py    how a setting's text is read (durations, sizes, hosts, ...), pure
    view.py     how `localrun env` shows them
    tls.py      the server's certificate and key, and what clients trust
    upstreams.py  upstreams.toml (the servers `serve` routes to) and the LOCALRUN_UPSTREAM_*
                settings (`localrun upstream` edits the file without starting anything)

Imports only errors: every other wing reads its settings from here.
"""
