"""Schemas the engine cannot enforce whole: the answer checked after, in child processes."""
