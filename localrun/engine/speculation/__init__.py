"""Speculative decoding: guesses from what came before (prompt lookup) or from a draft model, the
earlier answers a repeated request is drafted from, and what a batch costs, to weigh them.
"""
