"""Remote runners: the upstream servers of upstreams.toml, what goes over the wire to them and how
their answers are read.
"""
