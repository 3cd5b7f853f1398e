"""One template engine: every template renders through one sandboxed, bounded Jinja environment; a
hostile template ends within seconds with a one-line error naming the spec file and the field, when the
spec is loaded (before any stage runs), also through the real `synth-assets run`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_tiny_spec

from synth_assets import templates
from synth_assets.spec import SpecError, load_spec

REPO = Path(__file__).resolve().parent.parent
# what the issue tried, and the kinds around it: runaway loops (with and without output), huge
# repetitions, huge powers, recursion, size-multiplying calls and filters, growth by doubling
HOSTILE = {
    "nested_range_loops": "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
    "nested_loops_no_output": (
        "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
    ),
    "string_times_1e9": "{{ 'a' * 1000000000 }}",
    "range_10_to_9": "{% for x in range(10**9) %}{{ x }}{% endfor %}",
    "list_times_1e9": "{{ [1] * 10**9 }}",
    "length_of_huge_string": "{{ ('a' * 10**9) | length }}",
    "string_times_power_length": "{{ 'a'*10**9|length }}",
    "huge_power": "{{ 7 ** 100000000 }}",
    "macro_recursion": "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "exponential_macro_calls": (
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}"
    ),
    "center_filter": "{{ 'a' | center(1000000000) }}",
    "ljust_method": "{{ 'a'.ljust(1000000000) }}",
    "percent_width": "{{ '%0999999999d' % 1 }}",
    "format_width": "{{ '{:>999999999}'.format(1) }}",
    "doubling_concat": (
        "{% set ns = namespace(s='a') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
    ),
    "doubling_list": (
        "{% set ns = namespace(s=[1]) %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}{% endfor %}"
    ),
    "join_of_repeated_big_string": "{% set s = 'a' * 999999 %}{{ ([s] * 999999) | join }}",
    "replace_empty_with_big": "{% set s = 'a' * 999999 %}{{ s.replace('', s) }}",
    "triple_loop_over_string": (
        "{% set s = 'a' * 999 %}{% for a in s %}{% for b in s %}{% for c in s %}{% endfor %}{% endfor %}"
        "{% endfor %}"
    ),
    "list_extend_doubling": "{% set l = [1] %}{% for i in range(40) %}{% set _ = l.extend(l) %}{% endfor %}",
    "indent_with_big_prefix": "{{ ('\\n' * 999999) | indent('y' * 999999) }}",
    "output_past_cap": "{% for x in 'a' * 999999 %}{{ x * 999999 }}{% endfor %}",
    "lipsum": "{{ lipsum(100000, max=100000) }}",
}


@pytest.mark.parametrize("source", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_template_ends_within_the_time_bound_with_one_line(source: str) -> None:
    started = time.monotonic()
    with pytest.raises(templates.TemplateProblem) as caught:
        templates.render(source, {})
    assert time.monotonic() - started < templates.MAX_RENDER_SECONDS + 1.0
    assert "\n" not in str(caught.value) and str(caught.value)


def test_bounds_leave_ordinary_templates_alone() -> None:
    demos = [{"text": f"review {i}", "label": "positive"} for i in range(32)]
    source = (
        "{{ task }}\n{% for demo in demos %}\n  {% if demo.label %}\n- {{ demo.text | upper }}\n"
        "  {% endif %}\n{% endfor %}\n"
        "{{ '%.2f' % 0.5 }} {{ 'x' * 3 }} {{ 2 ** 10 }} {{ [1, 2] + [3] }} {{ labels | join(', ') }}"
    )
    text = templates.render(source, {"task": "Write.", "demos": demos, "labels": ["a", "b"]})
    lines = text.splitlines()
    # trim_blocks + lstrip_blocks: block tags leave neither blank lines nor indentation
    assert lines[0] == "Write." and lines[1] == "- REVIEW 0" and len(lines) == 34
    assert lines[-1] == "0.50 xxx 1024 [1, 2, 3] a, b"
    # a loop over the sandbox's whole range still fits the step budget once
    assert len(templates.render("{% for i in range(100000) %}{% endfor %}ok", {})) == 2


def test_undefined_variables_syntax_errors_and_sandbox_escapes_are_one_line_problems() -> None:
    with pytest.raises(templates.TemplateProblem, match="cannot render: 'colour' is undefined"):
        templates.render("{{ colour }}", {})
    with pytest.raises(templates.TemplateProblem, match="Jinja2 syntax error at line 1"):
        templates.render("{{ colour }", {})
    with pytest.raises(templates.TemplateProblem, match="unsafe"):
        templates.render("{{ ''.__class__.__mro__ }}", {})
    assert templates.variables(
        "{{ a }}{% for d in demos %}{{ d.text }}{% endfor %}{% set b = 1 %}{{ b }}"
    ) == {
        "a",
        "demos",
    }


def test_one_environment_serves_every_template_in_the_package() -> None:
    sources = {p: p.read_text() for p in (REPO / "synth_assets").rglob("*.py")}
    environments = [p.name for p, text in sources.items() if "Environment(" in text or "from jinja2" in text]
    assert environments == ["templates.py"]


def test_the_spec_module_does_not_import_generation() -> None:
    code = "import sys, synth_assets.spec; print([m for m in sys.modules if m.startswith('synth_assets.ge')])"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ}
    )
    assert result.stdout.strip() == "[]"


FIELDS = {
    "template": {"{{ product }}.": "{{ product }}.{HOSTILE}"},
    "steps.0.template": {
        "random_seed: 7": "random_seed: 7\nsteps:\n  - name: critique\n    template: |-\n      {HOSTILE}"
    },
    "output_template": {"random_seed: 7": "random_seed: 7\noutput_template: |-\n  {HOSTILE}"},
    "curation.relevance_text": {"max_chars: 600": "max_chars: 600\n  relevance_text: |-\n    {HOSTILE}"},
}


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("kind", ["nested_loops_no_output", "string_times_1e9", "exponential_macro_calls"])
def test_a_hostile_template_in_any_field_is_refused_when_the_spec_is_loaded(
    tmp_path: Path, field: str, kind: str
) -> None:
    replacements = {old: new.replace("{HOSTILE}", HOSTILE[kind]) for old, new in FIELDS[field].items()}
    path = write_tiny_spec(tmp_path, replacements=replacements)
    started = time.monotonic()
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert time.monotonic() - started < templates.MAX_RENDER_SECONDS + 2.0
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: {field}: ")


@pytest.mark.parametrize("kind", ["nested_range_loops", "string_times_1e9", "range_10_to_9"])
def test_synth_assets_run_stops_on_a_hostile_template_with_one_line_and_no_traceback(
    tmp_path: Path, kind: str
) -> None:
    path = write_tiny_spec(tmp_path, replacements={"{{ product }}.": "{{ product }}." + HOSTILE[kind]})
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path / "home"),
        "SYNTH_ASSETS_DB": str(tmp_path / "w.duckdb"),
    }
    (tmp_path / "home").mkdir()
    started = time.monotonic()
    result = subprocess.run(
        [str(Path(sys.executable).parent / "synth-assets"), "run", "--spec", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    error_lines = [line for line in result.stderr.splitlines() if "tiny_reviews.yaml" in line]
    assert len(error_lines) == 1 and "template:" in error_lines[0], result.stderr
    # the template bound is 2 s; the rest is Python and Dagster start-up
    assert elapsed < 60, elapsed
