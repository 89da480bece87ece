"""Sampling: the sampler chains, and what a schema or grammar asks of them.

    sampler.py        sampler chains from the sampling PARAMETERs, and log-probabilities
    constraint.py     a schema's or grammar's token masks (llguidance)
    grammar_guard.py  a client's grammar compiled first in a process of its own
    schema_items.py   uniqueItems and contains, held beside the grammar

A grammar masks the vocabulary only where it refuses the token the chain chose.
"""
