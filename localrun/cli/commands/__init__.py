"""The commands of one module each: store, pull, import, serve, ps and stop, info, runtime,
upstream and --version.
"""
