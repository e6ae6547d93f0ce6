"""Personalised content: Jinja2 templates in the immutable sandbox, with limits on time and size.

Templates see `profile` (traits), `computed` (computed traits), `account` (the traits and
`group_id` of the company the person was last linked to by a `group` call) and `accounts` (all
of them), `segments` (keys of the segments the person is in), `locale`, `recommendations`
(products) and `campaign`.
Missing values render as empty unless the template gives a fallback
(`{{ profile.first_name | default("there") }}`). For a person excluded from personalisation
every value but `locale` and `campaign` is empty, so each fallback applies.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from jinja2 import TemplateError, TemplateSyntaxError, Undefined, UndefinedError, meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_OUTPUT_CHARS = 256_000
MAX_RENDER_SECONDS = 0.5
MAX_RANGE = 10_000
MAX_SEQUENCE = 100_000


class TemplateRefused(Exception):
    """A template that is invalid, unsafe, too slow or too big.

    `line` is the template's line at fault when known; `missing_value` says the template only
    failed because a value it reads was missing, which depends on the person it is rendered for.
    """

    def __init__(self, message: str, *, line: int | None = None, missing_value: bool = False) -> None:
        super().__init__(message)
        self.line = line
        self.missing_value = missing_value


@dataclass
class _Budget:
    deadline: float = field(default_factory=lambda: time.monotonic() + MAX_RENDER_SECONDS)

    def check(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateRefused(f"rendering took longer than {MAX_RENDER_SECONDS}s")


class _LimitedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox with checks on loops, repetition and the clock."""

    intercepted_binops = frozenset({"*", "**", "+"})

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        budget: _Budget | None = context.get("__budget__")
        if budget is not None:
            budget.check()
        if operator_name == "**" and isinstance(right, int) and abs(right) > 64:
            raise TemplateRefused("exponent too large")
        result = {"*": operator.mul, "**": operator.pow, "+": operator.add}[operator_name](left, right)
        if isinstance(result, str | list | tuple) and len(result) > MAX_SEQUENCE:
            raise TemplateRefused("a value in the template grew too large")
        return result

    def call(self, context: Any, obj: Any, *args: Any, **kwargs: Any) -> Any:
        budget: _Budget | None = context.get("__budget__")
        if budget is not None:
            budget.check()
        return super().call(context, obj, *args, **kwargs)


def _limited_range(*args: int) -> Iterator[int]:
    numbers = range(*args)
    if len(numbers) > MAX_RANGE:
        raise TemplateRefused(f"range larger than {MAX_RANGE}")
    return iter(numbers)


_environment = _LimitedEnvironment(autoescape=False, undefined=Undefined)
_environment.globals["range"] = _limited_range
_html_environment = _LimitedEnvironment(autoescape=True, undefined=Undefined)
_html_environment.globals["range"] = _limited_range


@lru_cache(maxsize=512)
def _compile(source: str, html: bool) -> Any:
    environment = _html_environment if html else _environment
    try:
        template = environment.from_string(source)
    except TemplateSyntaxError as exc:
        raise TemplateRefused(f"the template is invalid: {exc}", line=exc.lineno) from exc
    except TemplateError as exc:
        raise TemplateRefused(f"the template is invalid: {exc}") from exc
    except RecursionError as exc:
        raise TemplateRefused("the template is nested too deeply to compile") from exc
    # A plain dict instead of Jinja's ChainMap of the environment's globals, which each
    # render would otherwise walk twice; the globals never change after start-up.
    template.globals = dict(template.globals)
    return template


@lru_cache(maxsize=1024)
def uses_name(source: str, name: str) -> bool:
    """Whether a template refers to a top-level variable (so it is only computed when needed)."""
    try:
        tree = _environment.parse(source)
    except TemplateError:
        return False
    return any(node.name == name for node in tree.find_all(nodes.Name))


# What a template sees that says nothing about the person.
NON_PERSONAL_VALUES = frozenset({"locale", "campaign"})


@lru_cache(maxsize=1024)
def reads_the_person(source: str) -> bool:
    """Whether a template reads anything about the person beyond the locale and the campaign."""
    try:
        tree = _environment.parse(source)
    except TemplateError:
        return False
    names = meta.find_undeclared_variables(tree)
    return bool(names - NON_PERSONAL_VALUES - set(_environment.globals))


def _empty(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {}
    if isinstance(value, list | tuple):
        return []
    return "" if isinstance(value, str) else None


def without_the_person(values: Mapping[str, Any]) -> dict[str, Any]:
    """Return what a template sees about a person excluded from personalisation: the locale and the
    campaign as they are, every other value empty (so a greeting takes its template's default)."""
    return {name: value if name in NON_PERSONAL_VALUES else _empty(value) for name, value in values.items()}


def _template_line(exc: BaseException) -> int | None:
    """Return the template line an error was raised at (Jinja maps its frames to template lines)."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def render(source: str, values: Mapping[str, Any], *, html: bool = False) -> str:
    """Render a template with the person's values inside the sandbox's limits."""
    template = _compile(source, html)
    budget = _Budget()
    context = {**values, "__budget__": budget}
    parts: list[str] = []
    size = 0
    try:
        for chunk in template.generate(context):
            size += len(chunk)
            if size > MAX_OUTPUT_CHARS:
                raise TemplateRefused(f"the output is larger than {MAX_OUTPUT_CHARS} characters")
            budget.check()
            parts.append(chunk)
    except SecurityError as exc:
        raise TemplateRefused(
            f"the template tried something unsafe: {exc}", line=_template_line(exc)
        ) from exc
    except TemplateRefused as exc:
        exc.line = exc.line or _template_line(exc)
        raise
    except MemoryError as exc:
        raise TemplateRefused("the template needed more memory than composing may use") from exc
    except RecursionError as exc:
        raise TemplateRefused(
            "the template recursed too deeply (a macro calling itself without end?)", line=_template_line(exc)
        ) from exc
    except UndefinedError as exc:
        raise TemplateRefused(
            f"the template failed on a missing value: {exc}", line=_template_line(exc), missing_value=True
        ) from exc
    except (TemplateError, TypeError, ValueError, ArithmeticError, LookupError, OverflowError) as exc:
        raise TemplateRefused(
            f"the template failed: {type(exc).__name__}: {exc}", line=_template_line(exc)
        ) from exc
    return "".join(parts)


def sample_values(*, campaign_name: str) -> dict[str, Any]:
    """Return what a template sees about a representative person, to try it out before it is saved.

    Traits it lacks are undefined, exactly as for a person without them at send time.
    """
    return {
        "profile": {
            "first_name": "Ada",
            "last_name": "Lovelace",
            "name": "Ada Lovelace",
            "email": "ada@example.com",
            "phone": "+4915112345678",
            "city": "Berlin",
            "country": "DE",
        },
        "computed": {},
        "account": {"group_id": "acme", "name": "Acme", "industry": "Retail", "plan": "enterprise"},
        "accounts": [{"group_id": "acme", "name": "Acme", "industry": "Retail", "plan": "enterprise"}],
        "segments": [],
        "locale": "en",
        "campaign": {"name": campaign_name},
        "recommendations": [
            {
                "product_id": "sku-1",
                "name": "Green tea",
                "category": "Tea",
                "price": 4.5,
                "reason": "best seller in your favourite category",
            }
        ],
    }
