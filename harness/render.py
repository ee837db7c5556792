"""Document blocks (Heading, Para, Table, Image, Pre) and their two renderers, with each format's escaping.

    html_page = render_html(title, blocks, images)   # one self-contained page, images embedded as data URIs
    markdown = render_markdown(blocks)                # the Markdown twin; images linked from images/

Used by harness.report (the sweep report). Escaping for a format lives here and nowhere else: html.escape for
HTML; md_escape for the report's Markdown text; md_cell for one line of untrusted text that must stay inert in
Markdown posted to a pull request (harness.gate's summary).
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass

IMAGES_DIR = "images"  # beside report.md; report.html embeds the same PNGs as data URIs


# The report is a list of blocks rendered twice, so the HTML page and the Markdown twin say the same thing and
# escaping happens in exactly one place per format. Block text is always plain, untrusted-safe text.
@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    text: str
    css_class: str = ""  # verdict ok / verdict warn / warn / note


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    css_class: str = ""  # "examples": monospace cells that keep line breaks; "trials": compact
    wrap_columns: tuple[int, ...] = ()  # columns of long prose that may wrap; other cells stay on one line


@dataclass
class Image:
    filename: str
    alt: str


@dataclass
class Pre:
    text: str
    summary: str = ""  # when set, the block is folded under this line (HTML <details>, also on GitHub)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:2rem auto;
max-width:1320px;padding:0 1.5rem;color:#1f2328;line-height:1.45;font-size:15px}
h1{font-size:1.7rem;border-bottom:2px solid #d0d7de;padding-bottom:.3rem}
h2{font-size:1.35rem;margin-top:2.2rem;border-bottom:1px solid #d0d7de;padding-bottom:.2rem}
h3{font-size:1.08rem;margin-top:1.4rem}
.table-wrap{overflow-x:auto;margin:.6rem 0}
table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top;white-space:nowrap}
th{white-space:normal;min-width:3rem}
td.wrap{white-space:normal;min-width:10rem;max-width:30rem}
table.trials{font-size:12px}
table.trials td,table.trials th{padding:3px 6px}
th{background:#f6f8fa}
details{margin:.6rem 0}
summary{cursor:pointer;color:#0969da}
tr:nth-child(even) td{background:#fbfcfd}
table.examples td{white-space:pre-wrap;font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12px;
max-width:360px;word-break:break-word}
pre{background:#f6f8fa;border:1px solid #d0d7de;border-radius:6px;padding:.7rem;overflow-x:auto;
font-size:12px;white-space:pre-wrap;word-break:break-word}
p.verdict{font-size:1.12rem;font-weight:600;padding:.7rem 1rem;border-radius:6px}
p.verdict.ok{background:#dafbe1;border-left:5px solid #1a7f37}
p.verdict.warn{background:#fff8c5;border-left:5px solid #9a6700}
p.warn{color:#9a6700;font-weight:600}
p.note{color:#57606a;font-style:italic}
figure{margin:.8rem 0}
img{max-width:100%;height:auto;border:1px solid #d0d7de}
""".strip()


def render_html(title: str, blocks: list, images: dict[str, bytes]) -> str:
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title>",
        f"<style>\n{_CSS}\n</style>",
        "</head>",
        "<body>",
    ]
    for block in blocks:
        if isinstance(block, Heading):
            anchor = re.sub(r"[^a-z0-9]+", "-", block.text.lower()).strip("-")
            parts.append(f'<h{block.level} id="{esc(anchor)}">{esc(block.text)}</h{block.level}>')
        elif isinstance(block, Para):
            css = f' class="{esc(block.css_class)}"' if block.css_class else ""
            parts.append(f"<p{css}>{esc(block.text)}</p>")
        elif isinstance(block, Table):
            css = f' class="{esc(block.css_class)}"' if block.css_class else ""
            head = "".join(f"<th>{esc(h)}</th>" for h in block.header)
            cells = [
                '<td class="wrap">' if i in block.wrap_columns else "<td>" for i in range(len(block.header))
            ]
            body = "\n".join(
                "<tr>" + "".join(f"{cells[i]}{esc(c)}</td>" for i, c in enumerate(row)) + "</tr>"
                for row in block.rows
            )
            parts.append(
                f'<div class="table-wrap"><table{css}>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n'
                "</tbody></table></div>"
            )
        elif isinstance(block, Image):
            data = base64.b64encode(images[block.filename]).decode("ascii")
            parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{esc(block.alt)}"></figure>')
        elif isinstance(block, Pre):
            pre = f"<pre>{esc(block.text)}</pre>"
            parts.append(
                f"<details><summary>{esc(block.summary)}</summary>\n{pre}\n</details>"
                if block.summary
                else pre
            )
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def render_markdown(blocks: list) -> str:
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"{'#' * block.level} {md_escape(block.text)}")
        elif isinstance(block, Para):
            text = md_escape(block.text)
            parts.append(f"**{text}**" if block.css_class.startswith("verdict") else text)
        elif isinstance(block, Table):
            lines = [
                "| " + " | ".join(md_escape(h) for h in block.header) + " |",
                "|" + "---|" * len(block.header),
            ]
            lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in block.rows]
            parts.append("\n".join(lines))
        elif isinstance(block, Image):
            parts.append(f"![{md_escape(block.alt)}]({IMAGES_DIR}/{block.filename})")
        elif isinstance(block, Pre):
            # A fence longer than any backtick run inside, so untrusted text cannot close it.
            longest = max((len(run) for run in re.findall(r"`+", block.text)), default=0)
            fence = "`" * max(3, longest + 1)
            code = f"{fence}text\n{block.text}\n{fence}"
            parts.append(
                f"<details><summary>{html.escape(block.summary)}</summary>\n\n{code}\n\n</details>"
                if block.summary
                else code
            )
    return "\n\n".join(parts) + "\n"


_MD_SPECIAL = re.compile(r"([\\`*_\[\]|#~])")
_AUTOLINK = re.compile(r"(?i)\b(https?:|ftp:|www)(//|\.)")  # where GFM autolinks a bare URL


def md_escape(text: str) -> str:
    """Plain text for a Markdown paragraph or table cell: no HTML, no formatting, no cell breaks, no links."""
    text = html.escape(text, quote=False)  # & < > as entities: raw HTML in Markdown would be rendered
    text = _MD_SPECIAL.sub(r"\\\1", text)
    return text.replace("\r", "").replace("\n", "<br>")


def md_cell(text: str, max_chars: int | None = 200) -> str:
    """Untrusted text as one line of inert Markdown (a table cell, list item or heading).

    HTML-escaped; no pipes, backticks or newlines; no links, images, autolinks or @-mentions. Text longer than
    `max_chars` is cut, with "…".
    """
    text = text if max_chars is None or len(text) <= max_chars else text[:max_chars] + "…"
    text = html.escape(text).replace("|", "&#124;").replace("`", "&#96;")
    # Character references never form Markdown syntax: no [text](url) link, no ![alt](url) image.
    text = text.replace("[", "&#91;").replace("]", "&#93;")
    # A zero-width space breaks @-mentions (and e-mail autolinks) and bare-URL autolinks.
    text = text.replace("@", "@&#8203;")
    text = _AUTOLINK.sub(r"\1&#8203;\2", text)
    return text.replace("\r", "").replace("\n", " ⏎ ")
