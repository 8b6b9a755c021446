"""The Jinja2 templates of the HTML reports (`templates/`): autoescaped, so a file name is
shown as text, never read as markup; only the plots' SVG is marked safe."""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined


def render(template: str, context: dict[str, Any]) -> bytes:
    """The named template filled from `context`, as UTF-8 bytes."""
    environment = Environment(
        loader=PackageLoader("ind_knn_ad.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )
    return environment.get_template(template).render(context).encode()
