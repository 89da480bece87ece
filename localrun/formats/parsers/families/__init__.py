"""The syntaxes of one family each, on the shared machinery of parsers/.

Llama 3, Mistral, DeepSeek, Kimi K2, Functionary, gpt-oss, Gemma 4, MiniMax, the pythonic family.
"""
