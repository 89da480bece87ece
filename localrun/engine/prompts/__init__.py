"""Prompts read once: prefixes kept on disk, and prompts tokenized again only where they change.

    disk_cache.py     prefixes evaluated once and kept on disk
    disk_prefix.py    which prefix a request reads from disk, and what a closing engine saves
    prefix_tokens.py  a chat's prompt tokenized again only past what it shares with the last

LOCALRUN_PROMPT_CACHE_MAX_BYTES bounds the folder on disk; `localrun prune` empties it.
"""
