"""Prompts read once: prefixes kept on disk, which of them a request reads, and a chat's prompt
tokenized again only past what it shares with the last.
"""
