"""A real text corpus on every machine: the docstrings of the Python standard library.

Read with :mod:`ast` from the interpreter's own source files (no import, no side effect, no
download), one entry per documented module, class, function and method: its dotted name and
the first paragraph of its docstring. Used by the semantic-search demo
(``relformer similar --corpus stdlib "..."``) and the text benchmark.
"""
from __future__ import annotations

import ast
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DocEntry", "stdlib_docstrings", "parsed_sources"]

#: folders of the standard library that are tests, vendored tools or GUI demos, not its API
SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "lib2to3", "idlelib",
                       "turtledemo", "__pycache__", "ensurepip", "venv", "tkinter", "__phello__"})


@dataclass(frozen=True)
class DocEntry:
    name: str  # e.g. "json.decoder.JSONDecoder.decode"
    text: str  # the first paragraph of the docstring, whitespace collapsed


def _first_paragraph(doc: str) -> str:
    return re.sub(r"\s+", " ", doc.strip().split("\n\n")[0]).strip()


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _walk(node: ast.AST, prefix: str):
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if child.name.startswith("_") and child.name != "__init__":
                continue  # private helpers are not what a user searches for
            name = f"{prefix}.{child.name}"
            doc = ast.get_docstring(child)
            if doc:
                yield name, doc
            if isinstance(child, ast.ClassDef):
                yield from _walk(child, name)


def parsed_sources(root: str | Path | None = None, private: bool = False):
    """``(module name, ast.Module)`` for every parseable source file of the standard library under
    ``root`` (default: this interpreter's), in path order, outside :data:`SKIP_DIRS`; modules and
    packages named ``_...`` only with ``private``."""
    root = Path(root) if root is not None else Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise FileNotFoundError(f"no standard library sources at {root}")
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if any(p in SKIP_DIRS for p in rel) or (
                not private and any(p.startswith("_") and p != "__init__.py" for p in rel)):
            continue
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError):
            continue  # e.g. a file kept for another Python version
        yield _module_name(path, root), tree


def stdlib_docstrings(min_words: int = 4, root: str | Path | None = None) -> list[DocEntry]:
    """Every public documented object of the standard library under ``root`` (default: this
    interpreter's), sorted by name; entries whose first paragraph has fewer than ``min_words``
    words, and repeated texts (overrides that copy a docstring), are dropped."""
    seen, entries = set(), []
    for module, tree in parsed_sources(root):
        found = [(module, ast.get_docstring(tree))] if ast.get_docstring(tree) else []
        for name, doc in found + list(_walk(tree, module)):
            text = _first_paragraph(doc)
            if len(text.split()) >= min_words and text not in seen:
                seen.add(text)
                entries.append(DocEntry(name, text))
    if not entries:
        raise ValueError(f"no docstrings found under {root}")
    return sorted(entries, key=lambda e: e.name)
