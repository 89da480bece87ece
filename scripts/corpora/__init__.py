"""Other projects' corpora: fetched once, and run against localrun.

fetch            fetch the corpora the tests hold localrun against (.ci/run does it first)
examples         the official clients' example programs against `localrun serve`, as a table
spec_documents   a running server's answers held to the dialects' published documents
template_prompts llama-server's prompts for llama.cpp's chat templates, recorded
"""
