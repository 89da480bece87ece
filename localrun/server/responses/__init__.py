"""OpenAI's Responses API: its routes, input, output items, stream of events, tools, background
runs and stored answers.
"""
