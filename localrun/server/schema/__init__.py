"""Schemas kept where the engine cannot enforce all of them: the answer checked after, in child
processes.
"""
