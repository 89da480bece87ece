"""What every connection and request passes before a route: limits, checks, request ids, escaping."""
