"""Recipes: which files of an image are code for a language runtime, and which are data.

A recipe is a TOML file (schema in docs/recipes.md). The built-in ones live in ``recipes/``
(installed as the ``sconify.recipes`` resource package); users pass their own with
``--recipe FILE.toml``, optionally starting from a built-in one with ``extends = "python"``.
"""

from __future__ import annotations

import fnmatch
import functools
import posixpath
import re
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

from sconify.errors import UsageError

BUILTIN_RECIPES = ("python", "node")
RECIPE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


@dataclass(frozen=True)
class CodeRule:
    """Files under ``paths`` (absolute, placeholders allowed) are code.

    ``extensions`` empty means every file; ``exclude`` globs match any path component.
    """

    paths: tuple[str, ...]
    extensions: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str = ""
    match: tuple[str, ...] = ()
    candidates: tuple[str, ...] = ()
    code: tuple[CodeRule, ...] = ()
    follow_needed: bool = True
    search_path: tuple[str, ...] = ()
    dlopen: tuple[str, ...] = ()
    encrypted: tuple[str, ...] = ()
    authenticated: tuple[str, ...] = ()
    ephemeral: tuple[str, ...] = ()
    source: str = ""

    def matches_executable(self, path: str) -> bool:
        name = posixpath.basename(path)
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.match)

    def with_extra_code(self, dirs: list[str], files: list[str]) -> "Recipe":
        """The recipe plus ``--fs-dir`` directories (all files) and ``--fs-file`` files."""
        extra = tuple(CodeRule(paths=(d,)) for d in dirs) + tuple(CodeRule(paths=(f,)) for f in files)
        return replace(self, code=self.code + extra)


def load_recipe(spec: str) -> Recipe:
    """Load a built-in recipe by name or a user recipe from a TOML file path."""
    if spec in BUILTIN_RECIPES:
        text = (builtin_recipe_dir() / f"{spec}.toml").read_text(encoding="utf-8")
        return parse_recipe(text, source=f"built-in recipe {spec!r}")
    path = Path(spec)
    if not path.suffix == ".toml" or not path.is_file():
        raise UsageError(
            f"recipe {spec!r} is neither a built-in recipe ({', '.join(BUILTIN_RECIPES)}) nor a "
            "readable .toml file; pass --recipe python, --recipe node or --recipe PATH.toml"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise UsageError(f"cannot read recipe {spec}: {reason}; pass a readable UTF-8 .toml file") from None
    return parse_recipe(text, source=str(path))


def builtin_recipe_dir() -> Path:
    """``recipes/``: installed beside this module (wheel), or at the top of a source checkout."""
    package = Path(__file__).resolve().parents[1]  # sconify/
    for candidate in (package / "recipes", package.parent / "recipes"):
        if (candidate / "python.toml").is_file():
            return candidate
    raise UsageError("the built-in recipes are missing from this installation; reinstall sconify")


def builtin_recipes() -> list[Recipe]:
    return [load_recipe(name) for name in BUILTIN_RECIPES]


def parse_recipe(text: str, *, source: str) -> Recipe:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{source} is not valid TOML ({exc}); fix the recipe file") from None
    base = Recipe(name="")
    if "extends" in doc:
        parent = _str(doc, "extends", source)
        if parent not in BUILTIN_RECIPES:
            raise UsageError(
                f"{source}: extends = {parent!r} names no built-in recipe; use one of "
                f"{', '.join(BUILTIN_RECIPES)}"
            )
        base = load_recipe(parent)
    _check_keys(doc, {"name", "description", "extends", "executable", "code", "libraries", "data"}, source)
    executable = _table(doc, "executable", source)
    _check_keys(executable, {"match", "candidates"}, f"{source} [executable]")
    libraries = _table(doc, "libraries", source)
    _check_keys(libraries, {"follow_needed", "search_path", "dlopen"}, f"{source} [libraries]")
    data = _table(doc, "data", source)
    _check_keys(data, {"encrypted", "authenticated", "ephemeral"}, f"{source} [data]")
    rules = []
    for index, rule in enumerate(doc.get("code", [])):
        where = f"{source} [[code]] #{index + 1}"
        if not isinstance(rule, dict):
            raise UsageError(f"{where} must be a table with 'paths'; see docs/recipes.md")
        _check_keys(rule, {"paths", "extensions", "exclude"}, where)
        paths = _abs_paths(_strs(rule, "paths", where), where)
        if not paths:
            raise UsageError(f"{where} has no 'paths'; list at least one absolute directory")
        rules.append(
            CodeRule(
                paths=paths,
                extensions=_strs(rule, "extensions", where),
                exclude=_strs(rule, "exclude", where),
            )
        )
    name = doc.get("name", base.name)
    if not isinstance(name, str) or not name:
        raise UsageError(f"{source} has no 'name'; add name = \"...\" to the recipe")
    if not RECIPE_NAME.fullmatch(name):
        raise UsageError(
            f"{source}: name {name!r} must be letters, digits, '_' or '-' (it names the CAS service)"
        )
    follow_needed = libraries.get("follow_needed", base.follow_needed)
    if not isinstance(follow_needed, bool):
        raise UsageError(f"{source} [libraries]: follow_needed must be true or false, not {follow_needed!r}")
    return Recipe(
        name=name,
        description=doc.get("description", base.description),
        match=_strs(executable, "match", source) or base.match,
        candidates=_abs_paths(_strs(executable, "candidates", source), source) or base.candidates,
        code=base.code + tuple(rules),
        follow_needed=follow_needed,
        search_path=_abs_paths(_strs(libraries, "search_path", source), source) or base.search_path,
        dlopen=base.dlopen + _strs(libraries, "dlopen", source),
        encrypted=base.encrypted + _abs_paths(_strs(data, "encrypted", source), source),
        authenticated=base.authenticated + _abs_paths(_strs(data, "authenticated", source), source),
        ephemeral=base.ephemeral + _abs_paths(_strs(data, "ephemeral", source), source),
        source=source,
    )


@dataclass
class Placeholders:
    """Values substituted into recipe paths."""

    version: str | None = None
    app: str | None = None

    def expand(self, path: str) -> str | None:
        """The path with placeholders filled, or None when a placeholder has no value."""
        if "{version}" in path:
            if not self.version:
                return None
            path = path.replace("{version}", self.version)
        if "{app}" in path:
            if not self.app:
                return None
            path = path.replace("{app}", self.app)
        return posixpath.normpath(path)


def excluded(relative: str, patterns: tuple[str, ...]) -> bool:
    """Whether a component of ``relative`` matches one of the glob ``patterns``."""
    if not patterns:
        return False
    match = _component_matcher(patterns)
    return any(match(part) for part in relative.split("/"))


@functools.lru_cache(maxsize=64)
def _component_matcher(patterns: tuple[str, ...]):
    """One compiled regex for all ``patterns`` (fnmatchcase semantics): a conversion tests
    every file of the code roots, tens of thousands of names."""
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns)).match


def has_extension(path: str, extensions: tuple[str, ...]) -> bool:
    if not extensions:
        return True
    name = posixpath.basename(path)
    # Versioned shared objects (libfoo.so.1.2) and CPython's tagged ones count as ".so".
    return any(name.endswith(ext) or (ext == ".so" and ".so." in name) for ext in extensions)


def _check_keys(table: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise UsageError(
            f"{where}: unknown key {unknown[0]!r}; allowed keys are {', '.join(sorted(allowed))} "
            "(see docs/recipes.md)"
        )


def _table(doc: dict, key: str, source: str) -> dict:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise UsageError(f"{source}: [{key}] must be a table; see docs/recipes.md")
    return value


def _str(doc: dict, key: str, where: str) -> str:
    value = doc[key]
    if not isinstance(value, str):
        raise UsageError(f"{where}: {key} must be a string")
    return value


def _strs(doc: dict, key: str, where: str) -> tuple[str, ...]:
    value = doc.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise UsageError(f'{where}: {key} must be a list of strings, e.g. {key} = ["..."]')
    return tuple(value)


def _abs_paths(paths: tuple[str, ...], where: str) -> tuple[str, ...]:
    for path in paths:
        if not path.startswith("/") and not path.startswith("{"):
            raise UsageError(f"{where}: path {path!r} must be absolute (start with '/')")
    return paths
