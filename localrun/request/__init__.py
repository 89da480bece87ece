"""A generation's request as every wing sees it: `GenRequest`, the images and audio it carries,
the JSON it came in (bounded) and the words for a prompt past the context.
"""
