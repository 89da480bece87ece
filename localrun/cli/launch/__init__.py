"""`localrun launch`: a coding agent pointed at the local server, with the context it needs."""
