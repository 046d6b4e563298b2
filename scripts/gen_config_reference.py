"""The study-config reference (docs/config.md), generated from the config dataclasses.

Every key of a study YAML is a field of `analogformer.study.config.StudyConfig` or of a
dataclass nested in it (`AnalogConfig`, `SweepConfig`, `HWAConfig`, `PruneConfig`, the
pruning schedules, ...). Each field carries its help as an *attribute docstring*, the
string literal on the line after it:

    repeats: int = 25
    \"\"\"Device instances (independent programmings) per time point.\"\"\"

This module walks `StudyConfig` recursively — nested dataclass fields, `Optional[...]`
sections, and fields typed `Any` whose default value is a dataclass (`hwa.recipe`,
`pruning.schedule`; a dataclass that belongs to a family of registered subclasses, such as
the schedules, is documented once per member) — reads the attribute docstrings with `ast`
from `inspect.getsource`, and renders one table per section: YAML key path, type,
default, help.

MkDocs runs it as a hook (`hooks:` in mkdocs.yml): the marker line `<!-- config-reference -->`
in docs/config.md is replaced at build time, so the page cannot drift from the code.
`python scripts/gen_config_reference.py` prints the generated Markdown.
"""
from __future__ import annotations

import ast
import dataclasses
import html
import inspect
import math
import re
import textwrap
import types
import typing
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

MARKER = "<!-- config-reference -->"
PAGE = "config.md"


# ------------------------------------------------------------------ attribute docstrings

def _class_attribute_docs(cls: type) -> Dict[str, str]:
    """{field name: docstring} of the attribute docstrings written in `cls`'s own body."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    tree = ast.parse(source)
    node = next((n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls.__name__), None)
    if node is None:
        return {}
    docs = {}
    body = node.body
    for stmt, nxt in zip(body, body[1:]):
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            name = stmt.target.id
        elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            name = stmt.targets[0].id
        else:
            continue
        if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
            docs[name] = inspect.cleandoc(nxt.value.value)
    return docs


def attribute_docs(cls: type) -> Dict[str, str]:
    """{field name: help} for `cls`, the nearest class in its MRO that documents a field winning."""
    docs: Dict[str, str] = {}
    for klass in cls.__mro__:
        if klass is object:
            continue
        for name, doc in _class_attribute_docs(klass).items():
            docs.setdefault(name, doc)
    return docs


# ------------------------------------------------------------------ walking the config tree

@dataclass
class Row:
    key: str          # YAML key path, e.g. "analog.pcm.gamma"
    type: str
    default: str
    help: str
    section: Optional[str] = None  # anchor of the nested section this key opens


@dataclass
class Section:
    path: str         # YAML key path of the section ("" = top level)
    cls: type
    anchor: str
    rows: List[Row]
    variant: Optional[str] = None  # e.g. "kind: gradual" for one member of a tagged family
    parent: Optional[str] = None


def _dataclass_in(tp) -> Optional[type]:
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return tp
    for a in typing.get_args(tp) or ():
        if dataclasses.is_dataclass(a) and isinstance(a, type):
            return a
    return None


def _is_optional(tp) -> bool:
    return type(None) in (typing.get_args(tp) or ())


def _family(cls: type) -> List[type]:
    """The members of a registered dataclass family (e.g. every pruning schedule): the
    dataclass subclasses, in this package, of the first non-dataclass base of `cls`;
    just `[cls]` when it has none."""
    roots = [b for b in cls.__mro__[1:] if b is not object and not dataclasses.is_dataclass(b)]
    if not roots:
        return [cls]
    out: List[type] = []

    def visit(c: type) -> None:
        for sub in c.__subclasses__():
            if (dataclasses.is_dataclass(sub) and sub.__module__.startswith("analogformer.")
                    and sub not in out):
                out.append(sub)
            visit(sub)

    visit(roots[0])
    return out or [cls]


def _default_instance(cls: type):
    try:
        return cls()
    except Exception:  # a section without defaults for every field: no Any-typed lookups
        return None


def _default_value(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def _type_name(tp) -> str:
    if tp is Any:
        return "any"
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        if dataclasses.is_dataclass(tp):
            return "section"
        return {"str": "str", "int": "int", "float": "float", "bool": "bool"}.get(tp.__name__, tp.__name__)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" (or null)" if type(None) in args else "")
    if origin in (tuple, typing.Tuple):
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {_type_name(args[0])}"
        return "[" + ", ".join(_type_name(a) for a in args) + "]"
    if origin in (list, typing.List):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin in (dict, typing.Dict):
        if not args:
            return "mapping"
        return f"mapping {_type_name(args[0])} → {_type_name(args[1])}"
    return str(tp).replace("typing.", "")


def _plain(v):
    """A default as YAML would hold it (tuples -> lists, dataclasses -> mappings)."""
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _yaml(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isinf(v) or math.isnan(v):
            return str(v)
        text = format(v, ".7g")
        return text if any(c in text for c in ".e") else text + ".0"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return v if re.fullmatch(r"[A-Za-z_.][\w./\-]*", v) else "'" + v.replace("'", "''") + "'"
    if isinstance(v, list):
        return "[" + ", ".join(_yaml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_yaml(x)}" for k, x in v.items()) + "}"
    return repr(v)


def _anchor(path: str, variant: Optional[str] = None) -> str:
    base = "key-" + (path.replace(".", "-").replace("_", "-") if path else "top-level")
    return base + (f"-{variant}" if variant else "")


def walk(root: Optional[type] = None) -> List[Section]:
    """Every section reachable from `root` (default `StudyConfig`), depth first."""
    if root is None:
        from analogformer.study.config import StudyConfig
        root = StudyConfig
    sections: List[Section] = []
    _walk(root, "", sections, None, None, None)
    return sections


def _walk(cls: type, path: str, sections: List[Section], variant: Optional[str],
          parent: Optional[str], instance) -> None:
    """Document `cls` at `path`; defaults are read from `instance`, the value the parent
    section holds by default (e.g. the study's `attention` is AttentionQuantConfig(bits=None)),
    or from `cls()`."""
    docs = attribute_docs(cls)
    hints = typing.get_type_hints(cls)
    if not isinstance(instance, cls):
        instance = _default_instance(cls)
    section = Section(path, cls, _anchor(path, variant), [], variant, parent)
    sections.append(section)
    children: List[Tuple[type, str, Optional[str], Any]] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key = f"{path}.{f.name}" if path else f.name
        tp = hints.get(f.name, Any)
        default = _default_value(f)
        if instance is not None:
            default = getattr(instance, f.name)
        sub = _dataclass_in(tp)
        members: List[type] = []
        if sub is not None:
            members = [sub]
        elif tp is Any and dataclasses.is_dataclass(default) and not isinstance(default, type):
            members = _family(type(default))
        if members:
            tagged = len(members) > 1
            if tagged:
                typ = "tagged section (`kind`)"
            else:
                typ = "section" + (" (or null)" if _is_optional(tp) or default is None else "")
            if tagged:
                dflt = _yaml({"kind": _kind(type(default))})
            else:
                dflt = "(section)" if default is not None else "null"
            row = Row(key, typ, dflt, docs.get(f.name, ""), _anchor(key, None if not tagged else _kind(members[0])))
            section.rows.append(row)
            for m in members:
                children.append((m, key, _kind(m) if tagged else None, default))
            continue
        shown = "(required)" if default is dataclasses.MISSING else _yaml(_plain(default))
        section.rows.append(Row(key, _type_name(tp), shown, docs.get(f.name, "")))
    for m, key, var, value in children:
        _walk(m, key, sections, var, section.anchor, value)


def _kind(cls: type) -> str:
    f = getattr(cls, "__dataclass_fields__", {}).get("kind")
    return f.default if f is not None and isinstance(f.default, str) else cls.__name__


# ------------------------------------------------------------------ Markdown

_CODE = re.compile(r"(`+)(.+?)\1")


def _cell(text: str) -> str:
    """One table cell: one line, pipes escaped, `<`/`>` escaped outside code spans."""
    text = " ".join(text.split())
    out, pos = [], 0
    for m in _CODE.finditer(text):
        out.append(_plain_text(text[pos:m.start()]))
        code = m.group(2).strip() if m.group(1) == "``" else m.group(2)
        # a pipe inside a code span would split the table cell, and "\\|" would show its
        # backslash: such spans become HTML
        out.append(f"<code>{html.escape(code).replace('|', '&#124;').replace(chr(92), '&#92;')}</code>" if "|" in code else m.group(0))
        pos = m.end()
    out.append(_plain_text(text[pos:]))
    return "".join(out)


def _plain_text(text: str) -> str:
    return text.replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def _code(text: str) -> str:
    return f"`{text}`" if "`" not in text else f"`` {text} ``"


def _summary(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    if doc.startswith(cls.__name__ + "("):  # dataclass's generated signature
        return ""
    return " ".join(doc.split("\n\n")[0].split())


def render(sections: Optional[List[Section]] = None) -> str:
    """The reference as Markdown: one heading and one table per section."""
    sections = walk() if sections is None else sections
    lines: List[str] = []
    for s in sections:
        title = f"`{s.path}`" if s.path else "Top level"
        if s.variant:
            title += f" — `kind: {s.variant}`"
        lines.append(f"### {title} {{#{s.anchor}}}")
        lines.append("")
        where = f"`{s.cls.__module__}.{s.cls.__qualname__}`"
        summary = _summary(s.cls)
        lines.append(f"{where}" + (f": {_cell(summary)}" if summary else ""))
        lines.append("")
        lines.append("| key | type | default | description |")
        lines.append("|---|---|---|---|")
        for r in s.rows:
            help_text = _cell(r.help) if r.help else "*(undocumented)*"
            if r.section:
                help_text += f" [→ section](#{r.section})"
            lines.append(f"| {_cell(_code(r.key))} | {_cell(r.type)} | {_cell(_code(r.default))} | {help_text} |")
        lines.append("")
    return "\n".join(lines)


def key_paths(sections: Optional[List[Section]] = None) -> List[str]:
    """Every YAML key path the reference documents."""
    sections = walk() if sections is None else sections
    return [r.key for s in sections for r in s.rows]


def undocumented(sections: Optional[List[Section]] = None) -> List[str]:
    """'ClassName.field (key)' of every reachable field without help text."""
    sections = walk() if sections is None else sections
    return [f"{s.cls.__name__}.{r.key.rsplit('.', 1)[-1]} ({r.key})" for s in sections
            for r in s.rows if not r.help.strip()]


# ------------------------------------------------------------------ MkDocs hook

def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:
    """MkDocs hook: fill the marker of docs/config.md with the generated reference."""
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise ValueError(f"docs/{PAGE} lost its marker line {MARKER!r}")
    return markdown.replace(MARKER, render())


if __name__ == "__main__":
    print(render())
