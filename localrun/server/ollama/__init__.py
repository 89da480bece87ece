"""Ollama's native API: generate, chat, embeddings, the store's routes, show, and System One."""
