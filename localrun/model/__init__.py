"""A stored model read back: `Model` and `Resolved` (stored), and what it can do (capabilities)."""
