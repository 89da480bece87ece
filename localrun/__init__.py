"""localrun: run language models locally, in the spirit of Ollama."""

__version__ = "0.1.0"
