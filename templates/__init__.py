"""Jinja2 templates of a RatOS printer's configuration, and the one way to render them.

Packaged templates (this folder):

- ``RatOS.cfg.j2``   the generated file the tool owns (printer model, boards, MCUs, per-host values)
- ``printer.cfg.j2`` the user-owned file, written only when missing or when regeneration is asked

A user folder (``printer_templates`` in host data) is searched first, so a file of the same name
replaces a packaged one; the packaged ones stay reachable as ``builtin/<name>``, so a user template
can ``{% extends "builtin/RatOS.cfg.j2" %}`` and override one ``{% block %}``.

Undefined variables are errors (StrictUndefined), and every ``{{ value }}`` is checked on its way
out: a line break, a bracket or ``#*#`` in a value would forge config lines, so rendering stops
with the template and line named.
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2

from pyinfra_ratos.printer.klipper_config import value_problem

PACKAGED_DIR = Path(__file__).resolve().parent


class TemplateRenderError(ValueError):
    """A template that cannot be rendered; names the template and its line."""

    def __init__(self, template: str, line: int | None, message: str) -> None:
        self.template = template
        self.line = line
        self.message = message
        where = f"{template} line {line}" if line else template
        super().__init__(f"{where}: {message}")


class _InjectedValue(ValueError):
    pass


def _finalize(value: Any) -> Any:
    if value is None:
        raise _InjectedValue("a value is None (a missing inventory key?)")
    problem = value_problem(str(value))
    if problem:
        raise _InjectedValue(problem)
    return value


@functools.lru_cache(maxsize=32)
def environment(user_dir: str | None = None) -> jinja2.Environment:
    packaged = jinja2.FileSystemLoader(str(PACKAGED_DIR))
    loaders: list[jinja2.BaseLoader] = []
    if user_dir:
        if not Path(user_dir).is_dir():
            raise TemplateRenderError(user_dir, None, "template folder not found. Fix: create it or unset printer_templates")
        loaders.append(jinja2.FileSystemLoader(user_dir))
    loaders += [packaged, jinja2.PrefixLoader({"builtin": packaged})]
    return jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        undefined=jinja2.StrictUndefined,
        finalize=_finalize,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


def _template_line(error: BaseException, name: str) -> tuple[str, int | None]:
    # jinja rewrites tracebacks so that template frames carry the template file and line
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename.endswith(".j2")]
    if frames:
        return Path(frames[-1].filename).name, frames[-1].lineno
    return name, getattr(error, "lineno", None)


def render(name: str, context: Mapping[str, Any], user_dir: str | None = None) -> str:
    """Render one template; raises :class:`TemplateRenderError` naming template and line."""
    env = environment(user_dir)
    try:
        template = env.get_template(name)
    except jinja2.TemplateNotFound:
        raise TemplateRenderError(name, None, "template not found in "
                                  f"{user_dir + ' or ' if user_dir else ''}{PACKAGED_DIR}") from None
    except jinja2.TemplateSyntaxError as error:
        raise TemplateRenderError(error.name or name, error.lineno, f"syntax error: {error.message}") from None
    try:
        return template.render(**context)
    except _InjectedValue as error:
        template_name, line = _template_line(error, name)
        raise TemplateRenderError(template_name, line, f"refused value: {error}") from None
    except jinja2.UndefinedError as error:
        template_name, line = _template_line(error, name)
        raise TemplateRenderError(template_name, line, f"undefined: {error.message}") from None
    except jinja2.TemplateError as error:
        template_name, line = _template_line(error, name)
        raise TemplateRenderError(template_name, line, str(error)) from None
