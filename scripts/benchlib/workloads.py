"""The prompts scripts/bench/speculative.py and scripts/measure/lookup_bound.py measure speculation
on.

Each workload has several prompts, so that one near tie (where a batch's logits, differing from
one token's in the last bits, pick the other of two almost equal tokens and the answer goes its
own way) moves a workload's figure by a part, not the whole. The prompts were written for their
content (code to rewrite, short factual texts to quote, a story to tell), not picked by how fast
any stack answers them. Raw ChatML, as SmolLM2 reads it.
"""

from __future__ import annotations

N_PREDICT = 256
CTX = 4096
SAMPLING = {"temperature": 0, "repeat_penalty": 1.0, "top_k": 40, "top_p": 1.0, "min_p": 0.0}

CODE = '''\
import json
import os
from dataclasses import dataclass, field


@dataclass
class Account:
    """A bank account with a history of transactions."""

    owner: str
    balance: float = 0.0
    history: list[tuple[str, float]] = field(default_factory=list)

    def deposit(self, amount: float) -> None:
        if amount <= 0:
            raise ValueError("a deposit must be positive")
        self.balance += amount
        self.history.append(("deposit", amount))

    def withdraw(self, amount: float) -> None:
        if amount <= 0:
            raise ValueError("a withdrawal must be positive")
        if amount > self.balance:
            raise ValueError("not enough money in the account")
        self.balance -= amount
        self.history.append(("withdraw", amount))

    def statement(self) -> str:
        lines = [f"Statement for {self.owner}"]
        for kind, amount in self.history:
            lines.append(f"{kind:>10} {amount:10.2f}")
        lines.append(f"{'balance':>10} {self.balance:10.2f}")
        return "\\n".join(lines)


class Bank:
    """Accounts by owner, saved to a JSON file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.accounts: dict[str, Account] = {}
        if os.path.exists(path):
            self.load()

    def open(self, owner: str) -> Account:
        if owner in self.accounts:
            raise ValueError(f"{owner} has an account already")
        account = Account(owner)
        self.accounts[owner] = account
        return account

    def transfer(self, source: str, target: str, amount: float) -> None:
        self.accounts[source].withdraw(amount)
        self.accounts[target].deposit(amount)

    def load(self) -> None:
        with open(self.path) as fh:
            data = json.load(fh)
        for owner, balance in data.items():
            self.accounts[owner] = Account(owner, balance)

    def save(self) -> None:
        with open(self.path, "w") as fh:
            json.dump({o: a.balance for o, a in self.accounts.items()}, fh)
'''

CACHE_CODE = '''\
from collections import OrderedDict


class LRUCache:
    """A mapping that forgets its least recently used keys past its capacity."""

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self.entries: OrderedDict[str, bytes] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> bytes | None:
        value = self.entries.get(key)
        if value is None:
            self.misses += 1
            return None
        self.entries.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: str, value: bytes) -> None:
        self.entries[key] = value
        self.entries.move_to_end(key)
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)

    def resize(self, capacity: int) -> None:
        self.capacity = capacity
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)

    def ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0
'''

REPORT_CODE = """\
import csv
from datetime import date


def read_rows(path: str) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def monthly_totals(rows: list[dict[str, str]]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for row in rows:
        day = date.fromisoformat(row["day"])
        month = f"{day.year}-{day.month:02d}"
        totals[month] = totals.get(month, 0.0) + float(row["amount"])
    return totals


def write_report(rows: list[dict[str, str]], path: str) -> None:
    totals = monthly_totals(rows)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["month", "total", "share"])
        overall = sum(totals.values())
        for month in sorted(totals):
            share = totals[month] / overall if overall else 0.0
            writer.writerow([month, f"{totals[month]:.2f}", f"{share:.1%}"])


if __name__ == "__main__":
    rows = read_rows("sales.csv")
    write_report(rows, "report.csv")
"""

TEXT = (
    "The lighthouse on Gull Rock was built in 1871. Its lamp burned whale oil until 1904, "
    "when kerosene replaced it. A keeper and two assistants lived on the rock, rowing to the "
    "mainland once a week for supplies. In the great storm of 1923 the keeper kept the light "
    "burning for three days without sleep. The light was automated in 1968 and the keepers "
    "left the island. Today the station is a museum, open from May to September. Visitors "
    "can climb the 112 steps to the lantern room and see the original lens."
)

TEXTS = (
    TEXT,
    "The bridge over the Kell River opened in 1889. It was made of iron and carried a single "
    "railway track. In 1932 a flood washed away its eastern pier, and trains stopped for two "
    "years. Engineers rebuilt the pier in stone and added a footpath. The railway closed in "
    "1965, but the bridge stayed open to walkers. Today it is listed as a monument, and a "
    "small museum stands at its western end.",
    "Marta Lind was born in a fishing village in 1902. She learned to read from her "
    "grandmother and left school at twelve to work in a cannery. At twenty she moved to the "
    "city and found work as a typist. In the evenings she wrote short stories about the sea. "
    "Her first book appeared in 1931 and sold only four hundred copies. Her third book, The "
    "Salt Year, won a national prize in 1948.",
    "The town library was founded in 1854 with two hundred books. A fire in 1901 destroyed "
    "half of the collection. The townspeople raised money to build a new library of brick. It "
    "opened in 1905 with a reading room and a children's corner. In 1970 the library added a "
    "music room with records. The building was restored in 2010 and now has free internet "
    "access.",
)


def edit(code: str, old: str, new: str) -> str:
    """Rewrite `code` with the identifier `old` renamed to `new`."""
    return (
        "<|im_start|>system\nYou are a code editor. You repeat the user's code exactly, with "
        "only the requested change.<|im_end|>\n<|im_start|>user\n```python\n"
        f"{code}```\nRename `{old}` to `{new}` everywhere.<|im_end|>\n"
        "<|im_start|>assistant\n```python\n"
    )


def quote(text: str) -> str:
    """Summarise `text` by quoting its sentences."""
    return (
        "<|im_start|>user\nSummarise this text by quoting its sentences, one per line, "
        f"exactly as written.\n\n{text}<|im_end|>\n<|im_start|>assistant\n"
    )


def rewrite(code: str, how: str) -> str:
    """Rewrite `code` in another shape: the answer starts as a copy and drifts from it (a small
    model rewrites it into something else), so drafts copied from the prompt often miss."""
    return f"<|im_start|>user\n{how}\n\n```python\n{code}```<|im_end|>\n<|im_start|>assistant\n```"


def story(subject: str) -> str:
    return f"<|im_start|>user\nWrite a long, detailed {subject}.<|im_end|>\n<|im_start|>assistant\n"


WORKLOADS: dict[str, tuple[str, ...]] = {
    "code": (
        edit(CODE, "balance", "funds"),
        edit(CACHE_CODE, "capacity", "limit"),
        edit(REPORT_CODE, "rows", "records"),
    ),
    "quote": tuple(quote(text) for text in TEXTS),
    "prose": (
        story("story about a lighthouse keeper who finds a message in a bottle"),
        story("essay about the history of bridges"),
    ),
    "diverge": (
        rewrite(CODE, "Rewrite this code as a class with methods, in modern style."),
        rewrite(REPORT_CODE, "Refactor this code to be more readable and rename the variables."),
        rewrite(CACHE_CODE, "Review this code and suggest improvements, quoting what you change."),
        rewrite(CODE, "Explain what this code does, line by line."),
    ),
}
EDIT_WORKLOADS = ("code", "quote")
