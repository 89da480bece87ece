"""Remote runners: upstreams.toml's servers, what goes over the wire, how answers are read."""
