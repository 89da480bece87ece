"""Sampling: the sampler chains, a schema's or grammar's token masks (llguidance), a client's
grammar compiled first in a child, and a schema's keywords held between items.
"""
