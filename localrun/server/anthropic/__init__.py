"""Anthropic's API: Messages, the legacy Text Completions and its Models listing, over the server's
one core.
"""
