"""Hostile chat templates (issue 57): each is refused through formats.template.render with a
TemplateError within 2 s, and the process's peak resident memory stays within 300 MB of idle
(measured in a child process: ru_maxrss never comes down). A template is untrusted input: it
comes inside a GGUF or through /api/create."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from localrun.errors import TemplateError, TemplateLimitError
from localrun.formats import template
from localrun.formats.jinja import env as jinja_env

N = 2_000_000_000
HOSTILE = {
    # one C call sized from an argument: str.format's nested width, printf's `*`
    "format-nested": "{{ '{:{}}'.format('x', 2000000000) }}",
    "format-nested-keyword": "{{ '{0:>{w}}'.format('x', w=2000000000) }}",
    "format-map": "{{ '{a:{b}}'.format_map({'a': 1, 'b': 2000000000}) }}",
    "printf-star": "{{ '%*d' % (2000000000, 1) }}",
    "printf-star-left": "{{ '%-*d' % (-2000000000, 1) }}",
    "printf-star-precision": "{{ '%.*f' % (2000000000, 1.0) }}",
    "format-filter-star": "{{ '%*d'|format(2000000000, 1) }}",
    # bytes methods
    "bytes-center": "{{ 'x'.encode().center(2000000000)|length }}",
    "bytes-zfill": "{{ 'x'.encode().zfill(2000000000)|length }}",
    "bytes-printf": "{{ ('%2000000000d'.encode() % 1)|length }}",
    "bytes-replace": "{{ ('x' * 4000).encode().replace(b'', 'y'.encode() * 4000)|length }}",
    "translate": "{{ ('x' * 1000).translate({120: 'y' * 4000000})|length }}",
    # filters that size a list from an argument; compiled (folded) before the fix
    "batch-fill": "{{ [1]|batch(300000000, 0)|list|length }}",
    "batch-fill-runtime": "{{ messages|batch(300000000, 0)|list|length }}",
    "slice": "{{ [1]|slice(30000000)|list|length }}",
    # many references to one large string, joined into the output (or a block's) in one call
    "output-join": "{% set s = 'x' * 1000000 %}{% for i in range(3000) %}{{ s }}{% endfor %}",
    "macro-output": "{% macro m() %}{% for i in range(3000) %}{{ s }}{% endfor %}{% endmacro %}"
    "{% set s = 'x' * 1000000 %}{{ m()|length }}",
    "block-output": "{% set s = 'x' * 1000000 %}{% set t %}{% for i in range(3000) %}{{ s }}"
    "{% endfor %}{% endset %}{{ t|length }}",
    # builtin sum adds lists in one C call each; the last as a constant folded while compiling
    "sum-lists": "{% set a = [[0] * 400000] * 3000 %}{{ a|sum(start=[])|length }}",
    "autoescape-sum": "{% autoescape ([[0] * 400000] * 300)|sum(start=[])|length %}x"
    "{% endautoescape %}",
    # integers squared on in one C call
    "power": "{{ (((9 ** 64) ** 64) ** 64) ** 64 }}",
}

CHILD = r"""
import json, resource, sys, time
from localrun.errors import TemplateError
from localrun.formats import template
cases = json.loads(sys.argv[1])
messages = [{"role": "user", "content": "hi"}]
template.render(None, messages)
idle = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
results = {}
for name, source in cases.items():
    started = time.monotonic()
    try:
        outcome = "rendered"
        template.render(source, messages)
    except TemplateError as exc:
        outcome = type(exc).__name__
    except BaseException as exc:
        outcome = "escaped " + type(exc).__name__
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    results[name] = [outcome, time.monotonic() - started, (peak - idle) // 1024]
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def measured() -> dict[str, list[object]]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(HOSTILE)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_templates_are_refused_fast_and_small(
    measured: dict[str, list[object]], name: str
) -> None:
    outcome, seconds, peak_mb = measured[name]
    assert outcome in ("TemplateError", "TemplateLimitError"), (name, outcome)
    assert isinstance(seconds, float) and seconds < 2, (name, seconds)
    # ru_maxrss is the peak so far: it covers this case and those before it
    assert isinstance(peak_mb, int) and peak_mb < 300, (name, peak_mb)


def test_modest_widths_still_format() -> None:
    source = (
        "{{ '{:>{}}'.format('x', 5) }}|{{ '%*d' % (4, 7) }}|{{ '%-5s'|format('a') }}|"
        "{{ 'ab'.encode().center(6)|length }}|{{ 'abc'.translate({97: 'zz'}) }}|"
        "{{ [1, 2, 3]|batch(2, 0)|list }}|{{ [1, 2, 3]|slice(2)|list }}|{{ 2 ** 10 }}"
    )
    out = template.render(source, [{"role": "user", "content": "hi"}])
    assert out == "    x|   7|a    |6|zzbc|[[1, 2], [3, 0]]|[[1, 2], [3]]|1024"


def test_sum_adds_as_jinjas_does() -> None:
    source = (
        "{{ [1, 2, 3]|sum }}|{{ [1.5, 2]|sum(start=1) }}|{{ [[1], [2, 3]]|sum(start=[]) }}|"
        "{{ messages|sum(attribute='content', start='') }}|{{ items|sum(attribute='n') }}"
    )
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    out = template.render(source, messages, variables={"items": [{"n": 2}, {"n": 5}]})
    assert out == "6|4.5|[1, 2, 3]|hiyo|7"


def test_compiling_evaluates_nothing_of_the_template() -> None:
    code = jinja_env._environment().compile("{{ [1, 2]|length }}{% set x = 2 * 3 %}", raw=True)
    assert "'2'" not in code and "6" not in code.split("def root", 1)[1]


def test_the_watchdog_is_a_template_limit_error_under_concurrent_renders(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOCALRUN_TEMPLATE_TIMEOUT", "200ms")
    source = "{% for i in range(999999) %}{% for j in range(9) %}{% endfor %}{% endfor %}x"
    outcomes: list[str] = []

    def render() -> None:
        try:
            template.render(source, [{"role": "user", "content": "hi"}])
            outcomes.append("rendered")
        except TemplateLimitError:
            outcomes.append("limit")
        except BaseException as exc:
            outcomes.append(type(exc).__name__)

    for _ in range(4):
        threads = [threading.Thread(target=render) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert outcomes == ["limit"] * 12, outcomes


def test_oversized_values_stay_template_errors() -> None:
    with pytest.raises(TemplateError):
        template.render("{{ 'x'|center(2000000000) }}", [{"role": "user", "content": "hi"}])
