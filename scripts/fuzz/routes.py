"""A seeded request fuzzer for every route of every dialect of `localrun serve`.

Each request starts from a valid body for its route and replaces one to three fields (or fields
of its options, messages, tools and schemas) with hostile values: wrong types, huge and negative
numbers, deep nesting, lone surrogates, oversized strings, the audit's hostile JSON schemas and
regular expressions; or one tokenize-shaped request (/tokenize with pieces, count_tokens,
/detokenize, a chat) over megabytes of CJK text, thousands of special tokens or a million
token ids. Every answer must be 2xx or 4xx with an error in the dialect's shape; a 5xx
or a dropped connection is a defect, and the server and its runners must stay up with bounded
memory.

    python scripts/fuzz/routes.py URL --model tiny --count 3000 --seed 0 [--pid SERVER_PID]

The generator and the checks live in scripts/fuzzlib/ (hostile.py, checks.py);
tests/system/test_fuzz_requests.py runs them (through hypothesis) against a test server.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: what they share

from fuzzlib.checks import problem, send, tree_rss
from fuzzlib.hostile import Request, make_request


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pid", type=int, help="the server's pid, for its memory")
    parser.add_argument("--api-key")
    args = parser.parse_args(argv)
    import httpx

    rng = random.Random(args.seed)
    headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    statuses: dict[int, int] = {}
    defects: list[str] = []
    peak = 0
    started = time.monotonic()
    with httpx.Client(base_url=args.url, headers=headers) as client:
        for i in range(args.count):
            request = make_request(rng, args.model)
            status, text = send(client, request)
            statuses[status] = statuses.get(status, 0) + 1
            found = problem(request, status, text) if status >= 0 else text
            if found:
                defects.append(f"{request.describe()} -> {found}")
                print("DEFECT", defects[-1], flush=True)
            if i % 50 == 0:
                peak = max(peak, tree_rss(args.pid))
            if i and i % 500 == 0:
                print(f"{i} requests ({time.monotonic() - started:.0f} s)", flush=True)
        alive = send(client, Request("GET", "/api/tags", None))[0] == 200
    peak = max(peak, tree_rss(args.pid))
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))
    print(
        f"\n{args.count} requests in {time.monotonic() - started:.0f} s; statuses {counts}; "
        f"{len(defects)} defects; server up afterwards: {alive}"
        + (f"; peak RSS of the server and runners {peak / 2**20:.0f} MiB" if args.pid else "")
    )
    return 1 if defects or not alive else 0


if __name__ == "__main__":
    sys.exit(main())
