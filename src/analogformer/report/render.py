"""Rendering of the study report's blocks to Markdown and to a standalone HTML page."""
from __future__ import annotations

import html
import re

# ----------------------------------------------------------------------------- rendering
def _md(blocks) -> str:
    out = []
    for b in blocks:
        if b[0] == "h":
            out.append("#" * b[1] + " " + b[2])
        elif b[0] in ("p", "md"):
            out.append(b[1].strip())
        elif b[0] == "table":
            esc = lambda s: str(s).replace("|", "\\|")
            align = ["---:" if _numeric(col) else "---" for col in zip(*b[2])] or ["---"] * len(b[1])
            out.append("\n".join(["| " + " | ".join(map(esc, b[1])) + " |", "|" + "|".join(align) + "|"]
                                 + ["| " + " | ".join(map(esc, r)) + " |" for r in b[2]]))
        elif b[0] == "img":
            out.append(f"![{b[1]}]({b[2]})")
        elif b[0] == "code":
            out.append(f"<details><summary>{b[1]}</summary>\n\n```{b[2]}\n{b[3].rstrip()}\n```\n\n</details>")
    return "\n\n".join(out) + "\n"


def _numeric(column) -> bool:
    return all(re.fullmatch(r"[+-]?[\d.]+( ± [\d.]+)?|n/a|", str(c)) for c in column)


def _inline(text: str) -> str:
    s = html.escape(text, quote=False)
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", s)


def _html_table(header, rows) -> str:
    left = [' class="l"' if not _numeric(col) else "" for col in zip(*rows)] or [""] * len(header)
    th = "".join(f"<th{a}>{_inline(str(h))}</th>" for h, a in zip(header, left))
    trs = "".join("<tr>" + "".join(f"<td{a}>{_inline(str(c))}</td>" for c, a in zip(r, left))
                  + "</tr>\n" for r in rows)
    return f"<table>\n<thead><tr>{th}</tr></thead>\n<tbody>\n{trs}</tbody>\n</table>"


def _md_to_html(text: str) -> str:
    """Enough Markdown for the included files: headings, pipe tables, code, images, text."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("```"):
            j = next((k for k in range(i + 1, len(lines)) if lines[k].strip().startswith("```")), len(lines))
            out.append(f"<pre><code>{html.escape(chr(10).join(lines[i + 1:j]))}</code></pre>")
            i = j + 1
            continue
        if line.startswith("|"):
            j = i
            while j < len(lines) and lines[j].strip().startswith("|"):
                j += 1
            cells = [[c.strip() for c in re.split(r"(?<!\\)\|", l.strip().strip("|"))]
                     for l in lines[i:j] if not re.fullmatch(r"[|:\-\s]+", l.strip())]
            out.append(_html_table(cells[0], cells[1:]) if cells else "")
            i = j
            continue
        m = re.fullmatch(r"(#{1,6})\s+(.*)", line)
        img = re.fullmatch(r"!\[([^\]]*)\]\(([^)]+)\)", line)
        if m:
            out.append(f"<h{len(m[1])}>{_inline(m[2])}</h{len(m[1])}>")
        elif img:
            out.append(f'<img src="{html.escape(img[2])}" alt="{html.escape(img[1])}">')
        elif line:
            out.append(f"<p>{_inline(line)}</p>")
        i += 1
    return "\n".join(out)


_CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;"
        "text-align:right}.l{text-align:left}th{background:#f3f3f3}"
        "img{max-width:100%}pre{background:#f6f6f6;padding:1em;overflow:auto}")


def _html(blocks, title) -> str:
    body = []
    for b in blocks:
        if b[0] == "h":
            body.append(f"<h{b[1]}>{_inline(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            body.append(f"<p>{_inline(b[1])}</p>")
        elif b[0] == "md":
            body.append(_md_to_html(b[1]))
        elif b[0] == "table":
            body.append(_html_table(b[1], b[2]))
        elif b[0] == "img":
            body.append(f'<figure><img src="{html.escape(b[2])}" alt="{html.escape(b[1])}">'
                        f"<figcaption>{_inline(b[1])}</figcaption></figure>")
        elif b[0] == "code":
            body.append(f"<details><summary>{html.escape(b[1])}</summary>"
                        f"<pre><code>{html.escape(b[3])}</code></pre></details>")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")
