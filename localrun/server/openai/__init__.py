"""OpenAI's chat completions, embeddings and models, and its legacy completions, over the server's
one core.
"""
