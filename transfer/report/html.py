"""``report.html``: one self-contained page per results folder.

Everything a reader needs on one page that opens offline: the comparison table, operating
points, calibration, subgroups, the leak report, the sweep tables where a sweep ran, the
EmoBox-compatible scores, every figure (inlined as base64 PNG), the resolved recipe and the
environment. No script, no stylesheet or font from the network, no external link: the page
works from a USB stick or an e-mail attachment.

The texts are the Markdown the report writes anyway (``table.md``, ``leak.md``, the sections of
:mod:`transfer.report.sections`), rendered with markdown-it-py (rich's own Markdown parser),
raw HTML in them escaped.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from markdown_it import MarkdownIt

from transfer.common.cache import atomic_write_text

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto;
       max-width: 1200px; padding: 0 24px 48px; color: #1b1b1b; }
h1 { font-size: 22px; margin: 24px 0 4px; } h2 { border-bottom: 1px solid #ccc; margin-top: 36px; }
h3 { font-size: 15px; margin: 20px 0 6px; } h4 { font-size: 14px; }
nav { position: sticky; top: 0; background: #fff; padding: 6px 0; border-bottom: 1px solid #eee; }
nav a { margin-right: 12px; color: #0b57d0; text-decoration: none; }
.meta { color: #555; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 8px 0; font-size: 12.5px; }
th, td { border: 1px solid #d0d0d0; padding: 3px 7px; text-align: right; white-space: nowrap; }
th { background: #f3f5f8; } td:first-child, th:first-child { text-align: left; }
p { max-width: 980px; }
figure { display: inline-block; margin: 8px 16px 8px 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 12px; color: #555; }
pre { background: #f6f8fa; padding: 10px; overflow-x: auto; font-size: 12px; }
.note { color: #6a4b00; background: #fff8e1; padding: 6px 10px; }
"""

_MD = MarkdownIt("commonmark", {"html": False}).enable("table")


@dataclass
class Section:
    """One section of the page: Markdown text, figures (PNG paths) and preformatted text."""

    id: str
    title: str
    markdown: str = ""
    figures: list[Path] = field(default_factory=list)
    pre: str = ""


def _demote(text: str, levels: int = 2) -> str:
    """Markdown headings moved down (a file's ``#`` title becomes an ``###`` in its section)."""
    return re.sub(r"^(#{1,6}) ", lambda m: "#" * min(6, len(m.group(1)) + levels) + " ", text,
                  flags=re.MULTILINE)


def render_markdown(text: str) -> str:
    """Markdown -> HTML, raw HTML escaped, every table in a horizontally scrolling box."""
    out = _MD.render(text)
    return out.replace("<table>", '<div class="scroll"><table>').replace("</table>",
                                                                         "</table></div>")


def figure_html(path: Path) -> str:
    """A PNG inlined as a data URL, with its file name as caption."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    name = html.escape(Path(path).name)
    return (f'<figure><img alt="{name}" src="data:image/png;base64,{data}">'
            f"<figcaption>{name}</figcaption></figure>")


def section_html(s: Section) -> str:
    """One section as HTML: its title, rendered Markdown, inlined figures and preformatted
    text."""
    parts = [f'<section id="{s.id}">', f"<h2>{html.escape(s.title)}</h2>"]
    if s.markdown:
        parts.append(render_markdown(_demote(s.markdown)))
    parts += [figure_html(p) for p in s.figures if Path(p).is_file()]
    if s.pre:
        parts.append(f"<pre>{html.escape(s.pre)}</pre>")
    parts.append("</section>")
    return "\n".join(parts)


def page(title: str, summary: str, sections: list[Section]) -> str:
    """The whole page."""
    nav = " ".join(f'<a href="#{s.id}">{html.escape(s.title)}</a>' for s in sections)
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">{html.escape(summary)} Written {stamp} by ser-transfer; rebuild with '
        "<code>python -m transfer.report RESULTS_DIR</code>.</p>",
        f"<nav>{nav}</nav>", *(section_html(s) for s in sections), "</body>", "</html>", ""])


def read_json(path: Path) -> str:
    """A JSON file pretty-printed ('' when absent or unreadable)."""
    try:
        return json.dumps(json.loads(Path(path).read_text(encoding="utf-8")), indent=2)
    except (OSError, ValueError):
        return ""


def write_html(out_dir: Path, title: str, summary: str, sections: list[Section]) -> Path:
    """Write ``report.html`` into ``out_dir``."""
    path = Path(out_dir) / "report.html"
    atomic_write_text(path, page(title, summary, sections))
    return path
