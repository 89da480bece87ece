"""`localrun run`: the one-shot answer, the terminal chat and --batch, over a session with a
running server or a model loaded in this process.
"""
