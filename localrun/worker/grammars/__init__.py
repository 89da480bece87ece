"""The grammars a runner builds: a `format`'s, and a call's forced text or a strict tool's."""
