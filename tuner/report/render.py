"""One list of sections, rendered twice: report.html (every figure a base64 data URI: one self-contained file)
and report.md (the same sections, the figures as links to the PNGs beside it). Templates: tuner.report.templates."""

from __future__ import annotations

import base64
import functools
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tuner.report.templates as templates
from tuner.report.figures import Figure
from tuner.report.tables import Table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class Section:
    """A titled part of the report: its blocks in order, each ("table", Table), ("figure", Figure) or ("note",
    text), so both renderers say the same thing in the same order."""

    key: str  # the HTML anchor
    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def table(self, table: Table | None) -> "Section":
        if table is not None:
            self.blocks.append(("table", table))
        return self

    def figure(self, figure: Figure) -> "Section":
        self.blocks.append(("figure", figure))
        return self

    def note(self, text: str) -> "Section":
        self.blocks.append(("note", text))
        return self


def png_size(file: Path) -> tuple[int, int]:
    """(width, height) in pixels from a PNG's header."""
    with open(file, "rb") as f:
        head = f.read(24)
    if head[:8] != PNG_MAGIC or head[12:16] != b"IHDR":
        raise ValueError(f"{file} is not a PNG file")
    return struct.unpack(">II", head[16:24])


def data_uri(file: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(file).read_bytes()).decode("ascii")


def breakable(text: str):
    """A column name that may break after its underscores (long config keys in narrow table headers)."""
    from markupsafe import Markup, escape

    return Markup("_<wbr>").join(escape(part) for part in str(text).split("_"))


def markdown_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


@functools.lru_cache(maxsize=1)
def _environments():
    import jinja2

    html = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    html.filters.update(png_size=png_size, data_uri=data_uri, breakable=breakable)
    markdown = jinja2.Environment(autoescape=False, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    markdown.filters.update(cell=markdown_cell)
    return html.from_string(templates.HTML), markdown.from_string(templates.MARKDOWN)


def render_html(name: str, context: list[tuple[str, str]], sections: list[Section]) -> str:
    return _environments()[0].render(name=name, context=context, sections=sections, css=templates.CSS.strip())


def render_markdown(name: str, context: list[tuple[str, str]], sections: list[Section]) -> str:
    text = _environments()[1].render(name=name, context=context, sections=sections)
    text = "\n".join(line.rstrip() for line in text.splitlines())
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"
