"""Registries: `pull` and `push` for Ollama's library and any OCI registry.

pull.py and push.py speak to a registry through oci.py, an OCI distribution client.
challenge.py reads the challenge a registry sends (WWW-Authenticate), and logins.py finds the
logins it takes.
"""
