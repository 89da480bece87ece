"""A generation's request as every wing sees it: `GenRequest`, and what comes with it.

With it come the images and audio it carries (media) and the JSON it came in, bounded (jsonlimits).
So do the context it gets (`context`, the one rule) and the words for a prompt past the context
(overflow).
"""
