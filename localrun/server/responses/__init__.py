"""OpenAI's Responses API: routes, input, output items, events, tools, background runs, storage."""
