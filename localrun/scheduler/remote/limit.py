"""How much of an upstream's answer is forwarded: no more than the client asked for.

An upstream is sent the client's limit (num_predict, max_tokens, max_output_tokens ...), but
nothing makes it keep to it. One that ignored it, or streamed forever, had 51 MB forwarded to a
client that asked for a short answer. `AnswerLimit` counts what comes back and says when to
stop. The reader then ends the answer as a length-limited one and closes the upstream's
request. Each dialect words that as its own: done_reason "length", finish_reason "length",
stop_reason "max_tokens", status "incomplete".

The limit is the client's num_predict when it set one, else LOCALRUN_UPSTREAM_MAX_TOKENS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# What is counted, since an upstream may report nothing as it goes:
# - tokens: the larger of the pieces forwarded (an honest server sends at least one token in
#   each) and the completion tokens the upstream reports mid-answer (vLLM's continuous usage);
# - characters of the text, the reasoning and the tool calls' arguments together, against
#   CHARS_PER_TOKEN a token. An answer of many characters in a few pieces passes no honest
#   answer's length: tokens average three to five characters, and the longest in common
#   vocabularies (runs of spaces or dashes) are a few dozen. SLACK covers a short answer of them.
CHARS_PER_TOKEN = 32
SLACK = 256  # characters: a short answer of the longest tokens


@dataclass
class AnswerLimit:
    """The bound on one upstream answer and what it has used so far."""

    tokens: int  # most tokens forwarded
    client: bool  # the client's own limit (else the server's ceiling)
    pieces: int = 0
    reported: int = 0  # completion tokens the upstream said it has sent
    chars: int = 0
    reached: bool = False

    @classmethod
    def of(cls, options: dict[str, Any], ceiling: int) -> AnswerLimit:
        """The limit of a request with these options (num_predict), or the server's ceiling."""
        asked = options.get("num_predict")
        if isinstance(asked, int) and not isinstance(asked, bool) and 0 < asked < ceiling:
            return cls(asked, client=True)
        return cls(ceiling, client=False)

    @property
    def most_chars(self) -> int:
        return self.tokens * CHARS_PER_TOKEN + SLACK

    def piece(self, chars: int) -> bool:
        """Count a piece of `chars` characters; False when it would take the answer past the limit.

        Such a piece is not forwarded, and `reached` stays set from then on.
        """
        if self.reached or self.pieces + 1 > self.tokens or self.chars + chars > self.most_chars:
            self.reached = True
            return False
        self.pieces += 1
        self.chars += chars
        return True

    def arguments(self, chars: int) -> bool:
        """Count `chars` characters of a tool call's arguments; False past the limit."""
        if self.reached or self.chars + chars > self.most_chars:
            self.reached = True
            return False
        self.chars += chars
        return True

    def report(self, completion_tokens: int) -> bool:
        """The upstream says it has sent this many tokens; False when that is past the limit."""
        self.reported = max(self.reported, completion_tokens)
        if self.reported > self.tokens:
            self.reached = True
        return not self.reached

    def describe(self) -> str:
        """Why the answer was cut, for the server log."""
        whose = "the client's limit" if self.client else "LOCALRUN_UPSTREAM_MAX_TOKENS"
        return (
            f"the answer passed {whose} of {self.tokens} tokens ({self.pieces} pieces, "
            f"{self.chars} characters forwarded); it was cut there"
        )
