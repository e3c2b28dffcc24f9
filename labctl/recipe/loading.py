"""Reading recipe documents safely: size and nesting bounds, JSON syntax errors with line
and column, and include paths that cannot leave the recipe's folder.

Everything here refuses bad input with a `RecipeError` and never crashes on it: recipes
come from people and from AI servers over the network.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from labctl.recipe.issues import RecipeError

MAX_BYTES = 1 << 20  # 1 MiB
MAX_DEPTH = 64  # JSON nesting (objects and arrays)
MAX_INCLUDE_DEPTH = 8

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")

RecipeSource = str | bytes | Path | Mapping[str, Any]


@dataclass(frozen=True)
class Document:
    """One parsed recipe file (or in-memory recipe): its data and where it came from."""

    data: Any
    base_dir: Path
    label: str  # file name for messages, or "<recipe>"
    text: str | None = None


def _check_depth_text(text: str, label: str) -> None:
    """Refuse deep nesting before the JSON parser recurses into it."""
    stripped = _STRING.sub('""', text)
    depth = 0
    for m in _BRACKET.finditer(stripped):
        if m.group() in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                line = stripped.count("\n", 0, m.start()) + 1
                raise RecipeError.one(
                    "", f"{label}: nested deeper than {MAX_DEPTH} levels (line {line}); "
                        "refused")
        else:
            depth -= 1


def _check_depth_data(data: Any, label: str) -> None:
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > MAX_DEPTH:
                raise RecipeError.one("", f"{label}: nested deeper than {MAX_DEPTH} levels; "
                                          "refused")
            items = value.values() if isinstance(value, dict) else value
            stack.extend((v, depth + 1) for v in items)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in a recipe (JSON has no such number)")


def parse_text(text: str, label: str = "<recipe>") -> Any:
    """JSON text to data; syntax errors name line and column."""
    if len(text.encode("utf-8", errors="surrogatepass")) > MAX_BYTES:
        raise RecipeError.one("", f"{label}: larger than 1 MiB; refused")
    _check_depth_text(text, label)
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise RecipeError.one(
            "", f"{label}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    except (ValueError, RecursionError) as exc:
        raise RecipeError.one("", f"{label}: invalid JSON: {exc}") from None


def read_file(path: Path, label: str | None = None) -> Document:
    label = label or path.name
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise RecipeError.one("", f"{label}: cannot read: {exc.strerror}") from None
    if size > MAX_BYTES:
        raise RecipeError.one("", f"{label}: {size} bytes is larger than 1 MiB; refused")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RecipeError.one("", f"{label}: cannot read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RecipeError.one("", f"{label}: not UTF-8 text (byte {exc.start})") from None
    return Document(parse_text(text, label), path.resolve().parent, label, text)


def load_source(source: RecipeSource, base_dir: Path | None = None) -> Document:
    """A recipe from a path (Path, or a str that does not start with '{'), JSON text
    (str/bytes), already-parsed data (a mapping, e.g. from an MQTT payload) or a Recipe."""
    if isinstance(source, Path):
        return read_file(source)
    if isinstance(source, bytes):
        if len(source) > MAX_BYTES:
            raise RecipeError.one("", "<recipe>: larger than 1 MiB; refused")
        try:
            text = source.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise RecipeError.one("", f"<recipe>: not UTF-8 text (byte {exc.start})") from None
        return Document(parse_text(text), (base_dir or Path.cwd()).resolve(), "<recipe>", text)
    if isinstance(source, str):
        if source.lstrip().startswith(("{", "[")) or not source.strip():
            return Document(parse_text(source), (base_dir or Path.cwd()).resolve(),
                            "<recipe>", source)
        return read_file(Path(source))
    if hasattr(source, "model_dump"):  # a labctl.recipe.models.Recipe
        source = source.model_dump(by_alias=True, exclude_none=True)
    if isinstance(source, Mapping):
        _check_depth_data(source, "<recipe>")
        try:
            size = len(json.dumps(source, allow_nan=False, default=str))
        except (TypeError, ValueError) as exc:
            raise RecipeError.one("", f"<recipe>: not JSON data: {exc}") from None
        if size > MAX_BYTES:
            raise RecipeError.one("", "<recipe>: larger than 1 MiB; refused")
        return Document(dict(source), (base_dir or Path.cwd()).resolve(), "<recipe>")
    raise RecipeError.one("", f"a recipe must be a file, JSON text or an object, "
                              f"not {type(source).__name__}")


def include_path(ref: str, including: Document, root: Path) -> Path:
    """The file an `include` names: relative to the including recipe, never absolute,
    never with `..`, and never outside `root` (the top recipe's folder), even through
    symbolic links. Raises ValueError with the reason."""
    if not ref or "\x00" in ref:
        raise ValueError("empty include path")
    if "\\" in ref:
        raise ValueError(f"{ref!r}: use '/' in include paths")
    pure = PurePosixPath(ref)
    if pure.is_absolute() or re.match(r"^[A-Za-z]:", ref):
        raise ValueError(f"{ref!r}: include paths must be relative, not absolute")
    if ".." in pure.parts:
        raise ValueError(f"{ref!r}: '..' is not allowed in include paths")
    path = (including.base_dir / pure).resolve()
    try:
        path.relative_to(root.resolve())
    except ValueError:
        raise ValueError(f"{ref!r} resolves outside the recipe folder") from None
    if not path.is_file():
        raise ValueError(f"{ref!r}: no such recipe file")
    return path
