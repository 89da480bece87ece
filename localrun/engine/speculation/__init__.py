"""Speculative decoding: guesses from prompt lookup or a draft model, weighed by what they cost.

    speculator.py  prompt lookup's drafts, their length chosen by expected gain
    lookup.py      the n-gram index a draft is looked up in, and the edits an answer makes
    draft.py       a draft model's guesses
    costs.py       what a batch costs now, timed by the loop
    answers.py     earlier answers a repeated request is drafted from

engine.batch verifies each draft in the batch that decodes the token before it.
"""
