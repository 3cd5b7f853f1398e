"""The one template engine: a sandboxed Jinja2 environment whose renders are bounded in time and size.

Every template of a spec — the prompt `template`, each step's template, `output_template` and
`curation.relevance_text` — is compiled and rendered here, with one configuration: sandboxed
(`jinja2.sandbox`), undefined variables are errors (`StrictUndefined`), no autoescaping (the output is
plain text for a model, not HTML), and `trim_blocks` + `lstrip_blocks` so a `{% for %}` line leaves no
blank line or indentation behind.

A spec is user input that a scheduler renders unattended, so one render may not exhaust the machine.
Jinja's sandbox alone blocks attribute escapes and caps `range()` at 100,000 items, but a template
could still run `{% for a in range(100000) %}{% for b in range(100000) %}` (10^10 iterations) or
evaluate `{{ 'a' * 1000000000 }}` (1 GB). Three kinds of bound close that:

- *steps*: every loop iteration, call, filter and binary operator counts against `MAX_STEPS` per
  render, and each step checks the wall clock against `MAX_RENDER_SECONDS`; loops are counted by
  wrapping every `{% for %}`'s iterable in the parsed template (no template can shadow the wrapper);
- *sizes*: an operation that can multiply a size in one C call (`*`, `**`, `%` formatting,
  `str.format`, `join`, `replace`, `center`/`ljust`/`rjust`/`zfill`, `indent`, `wordwrap`, `batch`)
  is refused *before* it runs when its result would pass `MAX_VALUE_SIZE` characters or elements;
  concatenation (`~`, `+`) and the values of `{{ }}` are checked after, which is safe because their
  inputs are already bounded;
- *output*: the render streams (`Template.generate`) and stops past `MAX_OUTPUT_CHARS`.

Any failure becomes a `TemplateProblem` with a one-line message; callers add the spec file and the
field. `lipsum` is removed from the globals (it can write unbounded text and no prompt needs it).
"""

from __future__ import annotations

import contextvars
import functools
import numbers
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError, TemplateSyntaxError, meta, nodes
from jinja2.sandbox import SandboxedEnvironment
from jinja2.visitor import NodeTransformer

# A rendered prompt, step or relevance text above 1 M characters (~250 k tokens) cannot be a useful
# prompt for any model we talk to; legitimate renders here are a few kB.
MAX_OUTPUT_CHARS = 1_000_000
# Largest string/list any single operation may build (characters, or elements counted deeply).
MAX_VALUE_SIZE = MAX_OUTPUT_CHARS
# Loop iterations + calls + filters + operators per render. The demo specs need < 200; a loop over
# `range(100000)` (the sandbox's own range cap) still fits once, a nested second one does not.
MAX_STEPS = 200_000
# Wall-clock bound of one render; legitimate renders take well under 10 ms here.
MAX_RENDER_SECONDS = 2.0
# Integers beyond 4096 bits (~1233 digits) have no place in a prompt; `10**10**10` would not finish.
MAX_INT_BITS = 4096


class TemplateProblem(ValueError):
    """A template that cannot be compiled or rendered; the message is one line without the field name."""


class TemplateLimitError(TemplateProblem):
    """A render that went past a time, step or size bound of this module."""


@dataclass
class _Budget:
    """Per-render counters (one per `render` call, kept in a context variable)."""

    deadline: float
    steps: int = 0

    def tick(self, count: int = 1) -> None:
        self.steps += count
        if self.steps > MAX_STEPS:
            raise TemplateLimitError(
                f"more than {MAX_STEPS:,} loop iterations and calls in one render (a runaway loop?)"
            )
        if time.monotonic() > self.deadline:
            raise TemplateLimitError(f"rendering took longer than {MAX_RENDER_SECONDS:g} s")


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("template_budget", default=None)


def _tick() -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.tick()


def _size(value: Any, depth: int = 0) -> int:
    """Characters/elements a value stands for when printed or joined, counted deeply; counting stops
    early once past `MAX_VALUE_SIZE`, so this is cheap for the values that matter."""
    if isinstance(value, str | bytes):
        return len(value)
    if isinstance(value, bool) or value is None:
        return 1
    if isinstance(value, int):
        return value.bit_length() // 3 + 1
    if depth > 32:
        raise TemplateLimitError("a value nested more than 32 levels deep")
    if isinstance(value, Mapping):
        items: Iterable[Any] = (part for pair in value.items() for part in pair)
        total = len(value)
    elif isinstance(value, list | tuple | set | frozenset):
        items, total = value, len(value)
    else:
        return 1
    for item in items:
        total += _size(item, depth + 1)
        if total > MAX_VALUE_SIZE:
            break
    return total


def _refuse_if_large(size: int, what: str) -> None:
    if size > MAX_VALUE_SIZE:
        raise TemplateLimitError(
            f"{what} would make a value of {size:,} characters or items (limit {MAX_VALUE_SIZE:,})"
        )


def _checked(value: Any, what: str = "a value") -> Any:
    _refuse_if_large(_size(value), what)
    return value


_NUMBER_IN_FORMAT = re.compile(r"\d+")


def _format_size(template: str, args: Iterable[Any]) -> int:
    """Upper bound of a %-format or str.format result: widths and precisions are the integers written
    in the format string, or passed as arguments (`%*d`, `{:{w}}`), so all of them are summed."""
    widths = sum(
        int(digits) if len(digits) < 10 else MAX_VALUE_SIZE + 1
        for digits in _NUMBER_IN_FORMAT.findall(template)
    )
    total = len(template) + widths
    for arg in args:
        total += _size(arg)
        if isinstance(arg, int) and not isinstance(arg, bool):
            total += abs(arg)
    return total


def _int_operand(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _binop_size(operator: str, left: Any, right: Any) -> None:
    """Refuse `*`, `**` and `%` whose result would be too large, before computing it."""
    if operator == "**":
        base, exponent = _int_operand(left), _int_operand(right)
        if (
            base is not None
            and exponent is not None
            and exponent > 0
            and base.bit_length() * exponent > MAX_INT_BITS
        ):
            raise TemplateLimitError(f"a power larger than {MAX_INT_BITS} bits")
    elif operator == "*":
        left_int, right_int = _int_operand(left), _int_operand(right)
        if left_int is not None and right_int is not None:
            if left_int.bit_length() + right_int.bit_length() > MAX_INT_BITS:
                raise TemplateLimitError(f"a product larger than {MAX_INT_BITS} bits")
        elif left_int is not None or right_int is not None:
            count = left_int if left_int is not None else right_int
            sequence = right if left_int is not None else left
            _refuse_if_large(max(count or 0, 0) * _size(sequence), "repeating a sequence")
    elif operator == "%" and isinstance(left, str):
        args = right if isinstance(right, tuple) else (right,)
        _refuse_if_large(_format_size(left, args), "%-formatting")


def _str_method_size(name: str, text: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
    """Upper bound of the result of a str method that can grow its input, or None for the others."""
    values = [*args, *kwargs.values()]
    if name in {"center", "ljust", "rjust", "zfill"} and values and isinstance(values[0], int):
        return max(len(text), values[0])
    if name == "expandtabs":
        tabsize = values[0] if values and isinstance(values[0], int) else 8
        return len(text) + text.count("\t") * max(tabsize, 0)
    if name == "replace" and len(values) >= 2 and isinstance(values[0], str) and isinstance(values[1], str):
        hits = len(text) + 1 if values[0] == "" else text.count(values[0])
        return len(text) + hits * len(values[1])
    if name in {"format", "format_map"}:
        mapping = values[0] if name == "format_map" and values and isinstance(values[0], Mapping) else {}
        return _format_size(text, [*values, *mapping.values()])
    if name == "translate":
        table = values[0] if values and isinstance(values[0], Mapping) else {}
        longest = max((_size(v) for v in table.values()), default=1)
        return len(text) * max(longest, 1)
    return None


def _join_size(items: list[Any], separator: Any) -> int:
    return sum(_size(item) for item in items) + _size(separator) * max(len(items) - 1, 0)


def _filter_guard(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """A built-in filter that counts as a step, refuses size-multiplying arguments and checks its result."""
    offset = 1 if getattr(function, "jinja_pass_arg", None) is not None else 0

    @functools.wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _tick()
        head, value, rest = (
            args[:offset],
            args[offset] if len(args) > offset else None,
            list(args[offset + 1 :]),
        )
        if name == "join" and value is not None:
            # materialised once so the size can be known; the sequence itself is bounded already
            value = list(value)
            separator = rest[0] if rest else kwargs.get("d", "")
            _refuse_if_large(_join_size(value, separator), "join")
        elif name == "replace" and isinstance(value, str):
            _refuse_if_large(_str_method_size("replace", value, tuple(rest), kwargs) or 0, "replace")
        elif name == "center" and isinstance(value, str):
            _refuse_if_large(_str_method_size("center", value, tuple(rest), kwargs) or 0, "center")
        elif name == "format" and isinstance(value, str):
            _refuse_if_large(_format_size(value, [*rest, *kwargs.values()]), "format")
        elif name == "indent" and isinstance(value, str):
            width = rest[0] if rest else kwargs.get("width", 4)
            per_line = width if isinstance(width, int) else _size(width)
            _refuse_if_large(len(value) + (value.count("\n") + 1) * per_line, "indent")
        elif name == "wordwrap" and isinstance(value, str):
            width = rest[0] if rest else kwargs.get("width", 79)
            wrap = (rest[2] if len(rest) > 2 else kwargs.get("wrapstring")) or "\n"
            lines = len(value) // max(width if isinstance(width, int) else 1, 1) + 1
            _refuse_if_large(len(value) + lines * _size(wrap), "wordwrap")
        elif name in {"batch", "slice"}:
            count = rest[0] if rest else kwargs.get("linecount", kwargs.get("slices", 1))
            if isinstance(count, int):
                _refuse_if_large(count, name)
        elif name == "sum":
            start = rest[1] if len(rest) > 1 else kwargs.get("start", 0)
            if not isinstance(start, numbers.Number):
                raise TemplateLimitError("sum: start must be a number")
        result = function(*head, value, *rest, **kwargs) if len(args) > offset else function(*args, **kwargs)
        if isinstance(result, str | list | tuple | dict):
            _checked(result, f"filter {name}")
        return result

    return guarded


def _bounded_range(*args: int) -> range:
    numbers_range = range(*args)
    if len(numbers_range) > MAX_STEPS:
        raise TemplateLimitError(f"range of {len(numbers_range):,} numbers (limit {MAX_STEPS:,})")
    return numbers_range


class _BoundSteps(NodeTransformer):
    """Wrap every loop's iterable and every `~` concatenation in a call to the environment."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = nodes.Call(
            nodes.EnvironmentAttribute("counted_iter"), [node.iter], [], None, None, lineno=node.lineno
        )
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return nodes.Call(
            nodes.EnvironmentAttribute("checked_concat"), [node], [], None, None, lineno=node.lineno
        )


class BoundedEnvironment(SandboxedEnvironment):
    """Jinja's sandbox with per-render step, time and size bounds (see the module docstring)."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self) -> None:
        super().__init__(
            undefined=StrictUndefined,
            autoescape=False,
            trim_blocks=True,
            lstrip_blocks=True,
            finalize=self._finalize_output,
        )
        self.globals.pop("lipsum", None)
        self.globals["range"] = _bounded_range
        self.filters = {name: _filter_guard(name, function) for name, function in self.filters.items()}

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        # `parse` and `compile` both go through here: the one place to rewrite the syntax tree
        tree = super()._parse(source, name, filename)
        return _BoundSteps().visit(tree)

    @staticmethod
    def _finalize_output(value: Any) -> Any:
        # every `{{ }}` value: a list holding one large string many times is small until printed
        return _checked(value, "printing a value")

    def counted_iter(self, iterable: Any) -> Iterator[Any]:
        """The iterable of a `{% for %}`: each iteration is one step of the render's budget."""
        budget = _BUDGET.get()
        for item in iterable:
            if budget is not None:
                budget.tick()
            yield item

    def checked_concat(self, value: str) -> str:
        """The result of a `~` concatenation, refused past `MAX_VALUE_SIZE` characters."""
        return _checked(value, "concatenation")

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _tick()
        _binop_size(operator, left, right)
        result = super().call_binop(context, operator, left, right)
        if operator == "+":
            _checked(result, "addition")
        return result

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        """Call an object from sandboxed code: one step; str methods that grow text are sized first."""
        _tick()
        target = getattr(__obj, "__wrapped__", __obj)
        owner = getattr(target, "__self__", None)
        if isinstance(owner, str):
            if target.__name__ == "join":
                items = list(args[0]) if args else []
                _refuse_if_large(_join_size(items, owner), "join")
                args = (items,)
            else:
                size = _str_method_size(target.__name__, owner, args, kwargs)
                if size is not None:
                    _refuse_if_large(size, f"str.{target.__name__}")
        result = SandboxedEnvironment.call(__self, __context, __obj, *args, **kwargs)
        if isinstance(owner, list | dict | set):
            _checked(owner, f"{type(owner).__name__}.{target.__name__}")
        return _checked(result, "a call") if isinstance(result, str | list | tuple | dict) else result


ENVIRONMENT = BoundedEnvironment()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, RecursionError):
        return "recursion too deep (a macro calling itself?)"
    if isinstance(exc, MemoryError):
        return "out of memory"
    # Jinja's own errors read well alone ("'colour' is undefined"); Python's need their kind
    return text if isinstance(exc, TemplateError | TemplateProblem) else f"{type(exc).__name__}: {text}"


@functools.lru_cache(maxsize=256)
def compile_template(source: str) -> Template:
    """The compiled template (cached by source). Raises `TemplateProblem` on a syntax error."""
    try:
        return ENVIRONMENT.from_string(source)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(f"Jinja2 syntax error at line {exc.lineno}: {exc.message}") from exc
    except Exception as exc:
        raise TemplateProblem(f"cannot compile: {_one_line(exc)}") from exc


def render(source: str, context: Mapping[str, Any]) -> str:
    """Render `source` with `context`, bounded by `MAX_STEPS`, `MAX_RENDER_SECONDS` and
    `MAX_OUTPUT_CHARS`. Raises `TemplateProblem` (one line: syntax error, undefined variable, sandbox
    violation, a bound passed, or any other error the template caused)."""
    template = compile_template(source)
    token = _BUDGET.set(_Budget(deadline=time.monotonic() + MAX_RENDER_SECONDS))
    parts: list[str] = []
    length = 0
    try:
        for chunk in template.generate(dict(context)):
            length += len(chunk)
            if length > MAX_OUTPUT_CHARS:
                raise TemplateLimitError(f"renders more than {MAX_OUTPUT_CHARS:,} characters")
            parts.append(chunk)
    except TemplateProblem:
        raise
    except Exception as exc:
        raise TemplateProblem(f"cannot render: {_one_line(exc)}") from exc
    finally:
        _BUDGET.reset(token)
    return "".join(parts)


def variables(source: str) -> set[str]:
    """Names a template reads from its context (`jinja2.meta.find_undeclared_variables`).
    Raises `TemplateProblem` on a syntax error."""
    try:
        return meta.find_undeclared_variables(ENVIRONMENT.parse(source))
    except TemplateSyntaxError as exc:
        raise TemplateProblem(f"Jinja2 syntax error at line {exc.lineno}: {exc.message}") from exc


def prompt_context(
    *,
    task: str,
    label: str,
    labels: list[str],
    attributes: dict[str, str],
    demos: list[dict[str, str]],
    anchor: dict[str, str] | None = None,
    typical_words: int = 0,
) -> dict[str, Any]:
    """Variables of the prompt `template`: task (stripped), label, labels, attributes (also each by
    name), demos ({text, label} dicts), anchor ({text, label}) and typical_words."""
    return {
        "task": task.strip(),
        "label": label,
        "labels": list(labels),
        "attributes": attributes,
        "demos": demos,
        # the seed row this prompt is built around (seed rewriting: "a new text like this one")
        "anchor": anchor or {"text": "", "label": label},
        # the median word count of the label's real rows: "in about {{ typical_words }} words" steers
        # a chat model toward the seed's shape (an unsteered 135M model wrote reviews 2.5x too long)
        "typical_words": typical_words,
        **attributes,
    }


def step_context(
    *,
    task: str,
    label: str,
    labels: list[str],
    attributes: dict[str, str],
    prompt: str,
    steps: dict[str, str],
) -> dict[str, Any]:
    """Variables of a step template and of `output_template`: the prompt's variables minus demos,
    plus `prompt` (the rendered first message) and `steps` (earlier outputs by step name)."""
    return {
        "task": task.strip(),
        "label": label,
        "labels": list(labels),
        "attributes": attributes,
        "prompt": prompt,
        "steps": steps,
        **attributes,
    }


def relevance_context(
    *, task: str, label: str, labels: list[str], attributes: dict[str, str]
) -> dict[str, Any]:
    """Variables of `curation.relevance_text`: task (as written), label, labels, attributes (also by name)."""
    return {"task": task, "label": label, "labels": list(labels), "attributes": attributes, **attributes}


__all__ = [
    "ENVIRONMENT",
    "MAX_OUTPUT_CHARS",
    "MAX_RENDER_SECONDS",
    "MAX_STEPS",
    "TemplateLimitError",
    "TemplateProblem",
    "compile_template",
    "prompt_context",
    "relevance_context",
    "render",
    "step_context",
    "variables",
]
