"""A generation's request as every wing sees it: `GenRequest`, the images and audio it carries,
the JSON it came in (bounded), the context it gets (`context`, the one rule) and the words for a
prompt past the context.
"""
