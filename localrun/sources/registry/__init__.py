"""Registries: `pull` and `push` over an OCI distribution client (Ollama's library, any OCI
registry), the challenge a registry sends and the logins it takes.
"""
