"""Record llama-server's prompts for llama.cpp's corpus of chat templates (tests/data/templates).

For each template, llama-server (built from the llama.cpp that llama-cpp-python vendors, as the
benchmarks build it, or --llama-server PATH) is started on a tiny model with
`--jinja --chat-template-file`, and POST /apply-template renders the conversations of
tests/data/templates/prompts.json; their prompts (None where llama-server refuses one) are written
back there, today's date replaced by placeholders. tests/unit/formats/test_template_corpus.py holds
localrun's prompts to them.

    scripts/corpora/template_prompts.py [--llama-server PATH] [--model TINY.gguf]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))  # scripts/: what they share
CORPUS = ROOT / "tests" / "data" / "templates"
PROMPTS = CORPUS / "prompts.json"
# Today's date as the corpus writes it: llama.cpp's date variables, date_string ("25 Nov 2026")
# and datetime ("Nov 25 2026"), and the templates' own strftime_now ("2026-11-25", gpt-oss,
# Granite, Mistral Small; "November 25, 2026", Apertus).
DATES = {
    "%d %b %Y": "{date_string}",
    "%b %d %Y": "{datetime}",
    "%Y-%m-%d": "{date_iso}",
    "%B %d, %Y": "{date_long}",
}


def placeholders(text: str, now: datetime) -> str:
    for fmt, name in DATES.items():
        text = text.replace(now.strftime(fmt), name)
    return text


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _apply(port: int, body: dict[str, Any]) -> str | None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/apply-template",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return str(json.loads(answer.read())["prompt"])
    except urllib.error.HTTPError:
        return None


def record(server: Path, model: Path, conversations: dict[str, Any]) -> dict[str, Any]:
    from benchlib.stacks.build import server_args

    out: dict[str, Any] = {}
    for path in sorted(CORPUS.glob("*.jinja")):
        port = _port()
        cmd = [str(server), "-m", str(model), "--jinja", "--chat-template-file", str(path)]
        cmd += ["--port", str(port), "-c", "256", "-np", "1", *server_args()]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                    break
                except OSError:
                    time.sleep(0.1)
            now = datetime.now()
            prompts = {}
            for name, body in conversations.items():
                prompt = _apply(port, body)
                prompts[name] = None if prompt is None else placeholders(prompt, now)
            out[path.name] = prompts
            print(f"{path.name}: {sum(p is not None for p in prompts.values())} rendered")
        finally:
            proc.kill()
            proc.wait()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-server", type=Path, help="a llama-server binary")
    parser.add_argument("--model", type=Path, help="a tiny GGUF (default: written here)")
    args = parser.parse_args()
    server = args.llama_server
    if server is None:
        from benchlib.stacks.build import DEFAULT_CACHE, ensure_build

        server = ensure_build(None, DEFAULT_CACHE, jobs=2).dir / "bin" / "llama-server"
    data = json.loads(PROMPTS.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from testmodels.text import write_tiny_model

            model = write_tiny_model(Path(tmp) / "tiny.gguf")
        data["llama_server"] = record(server, model, data["conversations"])
    PROMPTS.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
