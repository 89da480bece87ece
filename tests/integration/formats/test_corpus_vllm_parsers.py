"""vLLM's own tool-parser tests judging localrun's parsers, and the outputs they read said by a
scripted model through the real server in every dialect (issue 58).

vLLM 0.33.0's tests/tool_parsers/ (fetched by scripts/corpora/fetch.py; without them these
tests skip, saying so) run in a pytest of their own with tests/support/vllm_shim.py, in which each
of vLLM's parsers is localrun's for the family the runner chooses from the template those models
ship. vLLM's assertions judge localrun's reading, whole and streamed a token at a time. Each test
passes, or is one of:

- DIFFERENT: a reading that differs from vLLM's by choice, each with its reason;
- NOT_CLAIMED: the tests of a family localrun does not claim, with what it does instead;
- what cannot judge a reading here, counted, not listed: a test that reads a vLLM parser's
  internals (an attribute localrun's parser does not have), vLLM's harness rule of one call a
  streamed delta (localrun sends the calls a block completes together, as OpenAI's API
  allows and its clients read), and NOT_RUN: modules that import vLLM pieces outside the
  tool-parser API (xgrammar's structural tags, the Responses protocol, its engine harness).

Then, for each family, the output with the most calls that a passing test had read is said
by a scripted model with that parser's template and asked through the real server with the
official clients, in the four dialects, whole and streamed: the answer must be what the test
accepted.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from corpora import fetch as fetch_corpora
from testmodels.scripted import write_scripted_model

from localrun.scheduler import Scheduler
from localrun.store.local import Store

from support import TESTS, vllm_shim
from support.dialects import DIALECTS
from support.server import LiveServer, add_model

NOT_FETCHED = "vLLM's tests are not fetched: run scripts/corpora/fetch.py"

# vLLM test files that cannot run here, and why.
NOT_RUN = {
    "test_deepseekv4_tool_parser.py": "imports xgrammar's StructuralTag (vLLM's grammar engine)",
    "test_qwen3coder_tool_parser.py": "imports xgrammar's StructuralTag (vLLM's grammar engine)",
    "test_structural_tag_registry.py": "tests vLLM's xgrammar structural tags, not a reading",
    "test_dots_tool_parser.py": "no template for dots.llm1 here (not in either corpus)",
    "test_ernie45_moe_tool_parser.py": "no template for ERNIE 4.5 here (not in either corpus)",
    "test_gemma4_tool_parser.py": "imports vLLM's Responses protocol (ResponsesRequest)",
    "test_glm47_moe_tool_parser.py": "imports vLLM's Responses protocol (ResponsesRequest)",
    "test_k2_horizon_tool_parser.py": "imports vLLM's Responses protocol (ResponsesRequest)",
    "test_kimi_k3_named_tool_choice.py": "imports vLLM's Responses protocol (ResponsesRequest)",
    "test_poolside_v1_tool_parser.py": "imports vLLM's Responses protocol (ResponsesRequest)",
    "test_glm4_moe_tool_parser.py": "imports vLLM's engine replay harness (tests/parser)",
    "test_granite_tool_parser.py": "imports vLLM's GraniteEngineToolParser internals",
    "test_jamba_tool_parser.py": "imports partial_json_parser (vLLM's streaming JSON)",
    "test_utils.py": "tests vLLM's own helpers (UnexpectedAstError, make_valid_python ...)",
}

# Families whose vLLM tests localrun does not pass yet: what it reads instead (issue 58 open).
NOT_CLAIMED = {
    "test_hy_v3_tool_parser.py": (
        "the Hy3 template here writes `<tool_calls:opensource>` tags, which the syntax derived "
        "from it reads; vLLM's tests write another release's `<tool_calls>`"
    ),
}

BLANK = (
    "the blanks between text and a call are the call's: the text before it ends without them "
    "(vLLM keeps them)"
)
CUT = "a call cut off (no end marker) at the answer's end is text, as written (vLLM reads it)"
WHOLE = (
    "a call is sent whole when read, with all its arguments (vLLM streams the arguments in "
    "pieces and its test looks at the first piece)"
)
KEPT = "the text after the calls is kept as the answer's text (vLLM drops it)"

# Readings that differ from vLLM's by choice: a pattern of test ids, and why.
DIFFERENT = {
    r"test_kimi_k2.*test_extract_tool_calls\[": BLANK,
    r"test_minimax_m2.*test_content_before_tool_call": BLANK,
    r"test_deepseekv32.*(test_content_before_tool_call|test_delimiter_preserved_fast)": BLANK,
    r"test_hunyuan_a13b.*model_output3": BLANK,
    r"test_apertus.*test_mtp_streaming_massive_chunk": BLANK,
    r"test_granite4_tool_parser.py::test_tool_call_parser_complex": BLANK,
    r"test_minimax_m3.*nested_tool_call": BLANK,
    r"test_apertus.*(missing_tool_suffix|test_incomplete_tool_call)": CUT,
    r"test_kimi_k2.*test_truncated_tool_call_no_end_marker": CUT,
    r"test_step3p5.*missing_closing": CUT,
    r"test_step3p5.*test_extract_tool_calls_streaming_incremental": WHOLE,
    r"test_deepseekv32.*test_emits_arguments_before_invoke_completes": WHOLE,
    r"test_hunyuan_a13b.*streaming\[model_deltas3": WHOLE,
    r"test_xlam.*test_extract_tool_calls_streaming_incremental": WHOLE,
    r"test_xlam.*test_streaming_with_list_structure": (
        "reads vLLM's parser state (`current_tool_id`) after one piece of a call"
    ),
    r"test_llama3_json.*test_extract_tool_calls_simple": (
        "the sentence around a call stays the answer's text (vLLM drops it: content None)"
    ),
    r"test_kimi_k2.*test_content_after_tool_section": KEPT,
    r"test_step3p5.*mixed_content_and_multiple_tool_calls": KEPT,
    r"test_hunyuan_a13b.*Thank you": KEPT,
    r"test_deepseekv31.*test_extract_tool_calls_with": (
        'arguments are written as JSON anew (`{"x": 1}`), not as the model spaced them'
    ),
    r"test_kimi_k2.*(native_id|test_single_tool_call)": (
        "call ids are the server's (`call_...`), not Kimi's `functions.NAME:N`"
    ),
    r"test_kimi_k2.*test_invalid_funcall_id_skipped": (
        "a Kimi call whose id is not `functions.NAME:N` is read by its name all the same"
    ),
    r"test_kimi_k2.*test_invalid_json_still_extracted": (
        "arguments that are not JSON make no call: the block is text (vLLM passes them on)"
    ),
    r"test_kimi_k2.*test_noise_between_markers_suppressed": (
        "text in a call section that is not a call makes the section text, as written"
    ),
    r"test_lfm2.*test_echoed_tool_call_body_not_leaked": (
        "what the model writes after its call (LFM2 echoing the call's body) stays text"
    ),
    r"test_minimax_m2.*(test_multiple_params|test_header_and_params_in_separate)": (
        "a value is typed as JSON where it reads (`5`) when no schema says string"
    ),
    r"test_minimax_m2.*test_whitespace_preserved_across_chunks": (
        "one newline on each side of a value is the format's, and dropped"
    ),
    r"test_gigachat3.*gigachat31\]": (
        "GigaChat 3.1's `<|function_call|>` is read for the 3.1 template, which writes it; "
        "vLLM hands 3.1's outputs to the GigaChat 3 parser, whose template does not"
    ),
    r"test_gigachat3.*with_eos": (
        "the end-of-sequence token ends the answer in the engine and never reaches its text"
    ),
    r"test_minicpm5xml.*(space_marker|collapsed|sentencepiece)": (
        "artifacts of a tokenizer's decoding (`Ġ` for a blank, blanks lost between tags) that "
        "llama.cpp's detokenizer does not make"
    ),
    r"test_minicpm5xml.*(surrounding_text|interleaved_text)": KEPT,
    r"test_minicpm5xml.*test_incomplete_missing_function_end": (
        "a call whose closing tag the answer's end cut is read (the close a template shows may "
        "hold its end-of-turn token, which ends the answer)"
    ),
    r"test_minicpm5xml.*(invalid|wrapped_arguments|extra_arguments|alias_)": (
        "arguments are taken as written, not fitted to the tool's schema (vLLM's MiniCPM 5 "
        "parser drops, renames and unwraps them, and refuses calls its schema does not allow)"
    ),
    r"test_deepseekv32.*test_number_param$": "a number is kept as written (`5.0`, not `5`)",
    r"test_deepseekv32.*(test_arguments_wrapper_repaired|test_input_wrapper_repaired)": (
        "arguments wrapped in `arguments`/`input` are taken as written (vLLM unwraps them)"
    ),
}


def _corpus() -> Path | None:
    return fetch_corpora.corpus_dir(fetch_corpora.VLLM)


@pytest.fixture(scope="module")
def vllm_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """vLLM's tool-parser tests run once against localrun: each test's outcome, and what
    localrun read from each output a test gave a parser whole."""
    folder = _corpus()
    if folder is None:
        pytest.skip(NOT_FETCHED)
    out = tmp_path_factory.mktemp("vllm")
    env = {
        **os.environ,
        # tests/ and scripts/, as pyproject's pythonpath gives them (no ini is read here)
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(TESTS), str(TESTS.parent / "scripts"), os.environ.get("PYTHONPATH")])
        ),
        "LOCALRUN_VLLM_CORPUS": str(folder),
        "LOCALRUN_VLLM_REPORT": str(out / "report.json"),
        "LOCALRUN_VLLM_RECORD": str(out / "record.jsonl"),
    }
    cmd = [sys.executable, "-m", "pytest", "-p", "support.vllm_shim", "-c", os.devnull]
    cmd += ["--rootdir", str(folder), "-p", "no:cacheprovider", "-q"]
    cmd += ["--continue-on-collection-errors", "tests/tool_parsers"]
    done = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    report = out / "report.json"
    assert report.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    record = out / "record.jsonl"
    lines = record.read_text(encoding="utf-8").splitlines() if record.exists() else []
    return {"outcomes": json.loads(report.read_text()), "read": [json.loads(x) for x in lines]}


def _verdict(test: str, outcome: dict[str, str]) -> str:
    """What one vLLM test says of localrun: ok, a kind that cannot judge, or a difference."""
    kind, message = outcome["outcome"], outcome["message"]
    file = test.split("::")[0].rsplit("/", 1)[-1]
    if kind in ("passed", "xfailed") or message.startswith("[XPASS(strict)]"):
        return "ok"  # (an XPASS: localrun reads what vLLM's own parser is known to miss)
    if kind == "skipped":
        return "ok" if "no template mapped" not in message else "unmapped"
    if kind == "not collected":
        return "not run" if file in NOT_RUN else "difference"
    flags = ("adjust_request", "skip_special_tokens")
    if "attribute" in message or "Localrun_" in message or any(f in test.lower() for f in flags):
        return "internals"  # (adjust_request: vLLM's request flags, which localrun has not)
    if "only one tool call per update" in message:
        return "harness"
    if file in NOT_CLAIMED:
        return "not claimed"
    if any(re.search(pattern, test) for pattern in DIFFERENT):
        return "different"
    return "difference"


def test_vllm_parser_tests_read_as_vllm_reads(vllm_run: dict[str, Any]) -> None:
    outcomes = vllm_run["outcomes"]
    verdicts = {test: _verdict(test, outcome) for test, outcome in outcomes.items()}
    print(Counter(verdicts.values()))
    unexplained = [
        f"{test}: {outcomes[test]['message']}" for test, v in verdicts.items() if v == "difference"
    ]
    assert not unexplained, "\n".join(unexplained)
    stale = [p for p in DIFFERENT if not any(re.search(p, t) for t in outcomes)]
    assert not stale, f"DIFFERENT names no test: {stale}"
    explained = [
        p
        for p in DIFFERENT
        if not any(re.search(p, t) and verdicts[t] == "different" for t in outcomes)
    ]
    assert not explained, f"these pass now, take them out of DIFFERENT: {explained}"


# -- end to end -------------------------------------------------------------------------------


# What the server answers otherwise than vLLM's parser reads an output alone, by a choice.
THROUGH_THE_SERVER = {
    r"test_step3p5.*(single_tool_with_content|tool_with_typed_params|no_content_between)": (
        "StepFun 3.5's template opens a thought in every prompt, thinking off or on: the text "
        "before its call is that thought (reasoning), and the call ends it; vLLM's tool parser "
        "reads the output alone, as if no thought were open"
    ),
}

# LOCALRUN_VLLM_EVERY=1: every output a passing test accepted goes through the server, not one
# a family (a measurement of some minutes; CI runs the sample).
EVERY = os.environ.get("LOCALRUN_VLLM_EVERY") == "1"


def _chosen(vllm_run: dict[str, Any]) -> list[dict[str, Any]]:
    """The outputs a passing test accepted: per family (vLLM's parsers that localrun reads
    alike count once) the one with the most calls, or with EVERY each distinct one."""
    passed = {
        test.rsplit("/", 1)[-1]
        for test, outcome in vllm_run["outcomes"].items()
        if outcome["outcome"] == "passed"
    }
    best: dict[Any, dict[str, Any]] = {}
    for entry in vllm_run["read"]:
        if entry["test"].rsplit("/", 1)[-1] not in passed or not (entry["calls"] or EVERY):
            continue
        family = vllm_shim.family(entry["parser"])
        if family.harmony:
            continue
        key = (entry["parser"], entry["text"]) if EVERY else family.name
        held = best.get(key)
        if held is None or len(entry["calls"]) > len(held["calls"]):
            best[key] = entry
    return [best[key] for key in sorted(best)]


def _offered(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The tools the test offered, else each called name with any arguments (a tool of its
    own where it called none: vLLM's tests run the parser as if tools were offered, and
    without tools a server reads no calls, vLLM's as localrun: LFM2's empty `[]` block is
    then the text `[]`, its markers special tokens left out of the text)."""
    if entry["tools"]:
        return entry["tools"]
    names = dict.fromkeys(call["name"] for call in entry["calls"]) or {"lookup": None}
    return [
        {"type": "function", "function": {"name": n, "description": n, "parameters": {}}}
        for n in names
    ]


@pytest.fixture(scope="module")
def said(
    vllm_run: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LiveServer, list[dict[str, Any]]]]:
    folder = tmp_path_factory.mktemp("vllm-said")
    store = Store(folder / "models")
    chosen = _chosen(vllm_run)
    for number, entry in enumerate(chosen):
        parser = entry["parser"]
        source = vllm_shim.PARSERS[parser].read_text(encoding="utf-8")
        special = (*vllm_shim.VOCABULARY.get(parser, ()), *vllm_shim.family(parser).syntax.special)
        gguf = write_scripted_model(
            folder / f"{number}.gguf", entry["text"], template=source, special=special
        )
        add_model(store, f"vllm-{number}", gguf, "")
    server = LiveServer(store, Scheduler(store, num_parallel=1, max_loaded=1, max_queue=8))
    yield server, chosen
    server.close()


@pytest.mark.model
def test_what_vllm_read_comes_through_every_dialect(
    said: tuple[LiveServer, list[dict[str, Any]]],
) -> None:
    live, chosen = said
    assert len(chosen) >= 14, [e["parser"] for e in chosen]
    wrong, documented = [], 0
    for number, entry in enumerate(chosen):
        want = [{"name": c["name"], "arguments": c["arguments"]} for c in entry["calls"]]
        for dialect, ask in DIALECTS.items():
            for stream in (False, True):
                where = f"{entry['test']} {dialect} {'streamed' if stream else 'whole'}"
                # Thinking off: vLLM's tool parsers read the answer after its reasoning, and
                # their outputs hold none (a template that opens a thought would take them as
                # one).
                content, _, calls = ask(
                    live, f"vllm-{number}", _offered(entry), stream, think=False
                )
                if calls == want and content.strip() == (entry["content"] or "").strip():
                    continue
                if any(re.search(p, entry["test"]) for p in THROUGH_THE_SERVER):
                    documented += 1
                    continue
                wrong.append(f"{where}: {content!r} {calls}")
    routes = len(chosen) * len(DIALECTS) * 2
    with_calls = sum(bool(e["calls"]) for e in chosen)
    same = routes - len(wrong) - documented
    print(f"{len(chosen)} outputs ({with_calls} with calls): {same} of {routes} the same,")
    print(f"{documented} different by a choice in THROUGH_THE_SERVER")
    print("answers (4 dialects, whole and streamed) are what vLLM's tests accepted")
    assert not wrong, "\n".join(wrong)
