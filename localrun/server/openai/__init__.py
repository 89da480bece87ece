"""OpenAI's chat completions, embeddings, models and legacy completions, over one core."""
