"""A stored model read back: `Model` and `LoadSpec` (stored), and what it can do (capabilities)."""
