"""Format what several commands print about a model or an answer.

That is `show`'s sections and parameters (also the chat's /show), the GPU/CPU plan of
`show --fit`, and the timings of `--verbose` (also the chat's /set verbose).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from localrun.cli.output import columns, human_size

if TYPE_CHECKING:
    from localrun.cli.run.session import Answer, Session
    from localrun.model.stored import Model


def params_text(parameters: dict[str, Any]) -> str:
    """Parameters as aligned `name value` lines (strings quoted), as `show` prints them."""
    from localrun.recipes.modelfile import format_param

    rows = []
    for key, value in parameters.items():
        for item in value if isinstance(value, list) else [value]:
            rows.append([key, json.dumps(item) if isinstance(item, str) else format_param(item)])
    return columns(rows)


def _cache_text(details: dict[str, Any]) -> str:
    from localrun.gguf import memory

    window = details.get("sliding_window") or 0
    return memory.describe(memory.kind(details.get("architecture"), window), window)


def show_text(m: Any, template: str | None, chosen: str | None = None) -> str:
    """The sections `show` prints: model details, adapters, parameters, system, ... license."""
    from localrun.gguf.scan import format_count

    d = m.details
    info = [
        ["architecture", d.get("architecture")],
        ["parameters", format_count(d["parameter_count"]) if d.get("parameter_count") else None],
        ["context length", d.get("context_length")],
        ["embedding length", d.get("embedding_length")],
        ["quantization", d.get("quantization")],
        ["draft", _draft_text(m.draft)],
        ["projector", _projector_text(m)],
        ["prompt cache", _cache_text(d)],
    ]
    sections = ["  Model\n" + _indent(columns([[k, str(v)] for k, v in info if v is not None]), 4)]
    if m.adapter_paths:
        sections.append("  Adapters\n" + _indent("\n".join(p.name for p in m.adapter_paths), 4))
    if m.parameters:
        sections.append("  Parameters\n" + _indent(params_text(m.parameters), 4))
    if m.system:
        sections.append("  System\n" + _indent(_clip(m.system, 6), 4))
    if m.messages:
        lines = [f"{msg.role}: {_clip(msg.content, 1)}" for msg in m.messages]
        sections.append("  Messages\n" + _indent("\n".join(lines), 4))
    if template:
        why = f"chosen: {chosen}\n" if chosen else ""
        sections.append("  Template\n" + _indent(why + _clip(template, 4), 4))
    if m.licenses:
        sections.append("  License\n" + _indent("\n\n".join(_clip(t, 2) for t in m.licenses), 4))
    return "\n\n".join(sections) + "\n"


def _draft_text(draft: dict[str, Any] | None) -> str | None:
    """The draft model in one line: its name (or short digest), architecture, size, type."""
    from localrun.gguf.scan import format_count

    if draft is None:
        return None
    d = draft["details"]
    count = d.get("parameter_count")
    facts = [
        d.get("architecture"),
        f"{format_count(count)} parameters" if isinstance(count, int) and count else None,
        d.get("quantization"),
    ]
    described = ", ".join(str(fact) for fact in facts if fact)
    name = draft["model"] or draft["digest"][7:19]
    return f"{name} ({described})" if described else name


def _projector_text(m: Any) -> str | None:
    """The projector in one line: what it takes in, its size."""
    from localrun.gguf.scan import format_count
    from localrun.model.capabilities import projector_modalities

    if getattr(m, "projector_path", None) is None:
        return None
    recorded = m.config.get("projector") if hasattr(m, "config") else None
    details = recorded.get("details") if isinstance(recorded, dict) else None
    count = details.get("parameter_count") if isinstance(details, dict) else None
    facts = [" and ".join(projector_modalities(m))]
    if isinstance(count, int) and count:
        facts.append(f"{format_count(count)} parameters")
    return ", ".join(facts)


def _clip(text: str, max_lines: int) -> str:
    lines = text.strip("\n").splitlines() or [""]
    if len(lines) > max_lines:
        lines = [*lines[:max_lines], "..."]
    return "\n".join(line if len(line) <= 100 else line[:97] + "..." for line in lines)


def _indent(text: str, n: int) -> str:
    return "\n".join((" " * n + line) if line else line for line in text.splitlines())


def print_fit(model: Model, overrides: dict[str, Any], as_json: bool) -> None:
    """Print how `model` would be split between GPU and CPU, without loading it."""
    from localrun.engine.library.buildinfo import build_info
    from localrun.hardware import workers
    from localrun.hardware.fit import plan_fit
    from localrun.settings import config

    build = build_info()
    found, problems = workers.survey(config.workers())
    fit = plan_fit(model, {**model.parameters, **overrides}, build=build, workers=found)
    num_ctx, plan, warnings = fit.num_ctx, fit.plan, fit.warnings
    if as_json:
        out = {"model": str(model.name), "num_ctx": num_ctx, **asdict(plan)}
        out["runtime_bytes"] = plan.runtime_bytes
        out["engine_runtime"] = build.runtime_text
        out["warnings"] = [*problems, *warnings]
        print(json.dumps(out, indent=2))
        return
    gpu = plan.gpu
    rows = [
        ["num_ctx", str(num_ctx)],
        ["GPU layers", f"{plan.n_gpu_layers} of {plan.total_layers}"],
        ["GPU", f"{gpu.index} ({gpu.name}, {gpu.backend})" if gpu else "none"],
        ["runtime", build.runtime_text],
        ["VRAM", human_size(plan.vram_bytes)],
        ["RAM", human_size(plan.ram_bytes)],
        ["KV cache", human_size(plan.kv_bytes)],
        ["reason", plan.reason],
    ]
    rows += [["warning", w] for w in [*problems, *warnings]]
    print("  Fit\n" + "\n".join("    " + line for line in columns(rows).splitlines()))


def _duration(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3f}s"
    return f"{seconds * 1000:.3f}ms"


def _share(part: int, whole: int) -> str:
    return f" ({100 * part / whole:.0f}%)" if whole else ""


def print_stats(
    reply: Answer, opened: Session, total: float | None = None, load_s: float | None = None
) -> None:
    """Timings on stderr, in Ollama's --verbose layout."""
    t = reply.timings
    lines = [
        ("total duration", _duration(total if total is not None else t.total_s)),
        ("load duration", _duration(opened.load_s(reply) if load_s is None else load_s)),
        ("prompt eval count", f"{t.prompt_tokens} token(s)"),
        ("prompt cache hit", f"{t.cached_tokens} token(s)"),
        ("prompt disk cache", f"{t.disk_tokens} token(s)"),
        ("prompt eval duration", _duration(t.prompt_s)),
        ("prompt eval rate", f"{t.prompt_rate:.2f} tokens/s"),
        ("eval count", f"{t.eval_tokens} token(s)"),
        ("eval duration", _duration(t.eval_s)),
        ("eval rate", f"{t.eval_rate:.2f} tokens/s"),
        ("draft count", f"{t.draft_tokens} token(s)"),
        (
            "draft accepted",
            f"{t.draft_accepted} token(s)" + _share(t.draft_accepted, t.draft_tokens),
        ),
        ("done reason", str(reply.done_reason)),
    ]
    for note in opened.notes:
        lines.append(("offload", note))
    if opened.runtime:
        lines.append(("runtime", opened.runtime))
    if opened.cache_note:
        lines.append(("prompt cache", opened.cache_note))
    width = max(len(k) for k, _ in lines) + 2
    for key, value in lines:
        print(f"{key + ':':{width}}{value}", file=sys.stderr)
    sys.stderr.flush()
