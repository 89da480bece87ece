"""`localrun run`: answer once, chat in the terminal or run --batch, with a server or in-process.

The session talks to a running server, or to a model loaded in this process.
"""
