"""Anthropic's API: Messages, the legacy Text Completions and the Models list, over one core."""
