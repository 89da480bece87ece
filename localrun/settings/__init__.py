"""localrun's settings: every LOCALRUN_* variable, the settings file, TLS.

    config.py   every setting declared once (name, default, parser, help), read when used
    parse.py    how a setting's text is read (durations, sizes, hosts, ...), pure
    view.py     how `localrun env` shows them
    tls.py      the server's certificate and key, and what clients trust

Imports only errors: every other wing reads its settings from here.
"""
