"""What every request passes before a route: limits, checks, request ids, escaping."""
