"""Code selection that follows the interpreter (issue 17): which program the container runs,
and where that program loads code from, derived from the image alone (never run).

Pure analysis over a ``RootFS`` and the image config; no global state. Paths in results are
absolute image paths ("/opt/venv/bin/python"), except ``code_files``, which returns RootFS keys
like ``select.select_code``.

- ``find_service(fs, config, binary=None) -> Service``: ENTRYPOINT + CMD followed through
  shells, entrypoint scripts (``exec "$@"``), ``#!`` scripts, venv symlinks, ``env``/``tini``/
  ``gosu``... to the ELF; ``Service.reasons`` says how, ``Service.scripts`` lists the scripts
  crossed (code).
- ``python_layout`` / ``python_sys_path`` / ``python_roots``: CPython's getpath + site.
- ``node_layout`` / ``node_roots``: Node's CommonJS resolution.
- ``code_roots(fs, service)``: the one of the two the service's ``kind`` calls for (for other
  programs: the scripts crossed only).
- ``code_files(fs, roots)``: the files (RootFS keys) under the roots; ``native_code(files)``:
  the shared objects among them (C extensions, ``.node`` addons).
- ``suspicious_code_dirs(fs, roots, workdir)``: code in application places outside every root.

Used by ``sconify.conversion.plan.make_plan`` (the service, its roots and files, the warnings; the recipe's
rules are added on top, and the code kept in place is chosen by ``plan.removable_code``) and by
``sconify measure`` for an image that carries no sconify labels.
"""

from __future__ import annotations

from sconify.conversion.codepaths.common import (
    APP_PLACES,
    NODE_EXCLUDE,
    NODE_EXTENSIONS,
    PYTHON_EXCLUDE,
    PYTHON_EXTENSIONS,
    CodeRoot,
    CodeRoots,
    SuspiciousDir,
    code_files,
    native_code,
    suspicious_code_dirs,
)
from sconify.conversion.codepaths.node import NodeLayout, node_layout, node_roots, parse_node_argv
from sconify.conversion.codepaths.python import (
    PythonLayout,
    find_module,
    parse_python_argv,
    python_layout,
    python_roots,
    python_sys_path,
)
from sconify.conversion.codepaths.service import Service, find_service, image_settings, kind_of


def code_roots(fs, service: Service, env: dict[str, str] | None = None, workdir: str | None = None) -> CodeRoots:
    """The code roots of ``service``: ``python_roots`` or ``node_roots`` by ``service.kind``;
    for any other program only the scripts crossed to start it."""
    if service.kind == "python":
        return python_roots(fs, service, env, workdir)
    if service.kind == "node":
        return node_roots(fs, service, env, workdir)
    roots = CodeRoots(language="", reasons=list(service.reasons) + [
        f"{service.executable} is neither CPython nor Node.js: no module search path to follow"])
    for script in service.scripts:
        roots.add(CodeRoot(script, "script", f"{script}: crossed to start the service"))
    return roots


__all__ = [
    "APP_PLACES", "NODE_EXCLUDE", "NODE_EXTENSIONS", "PYTHON_EXCLUDE", "PYTHON_EXTENSIONS",
    "CodeRoot", "CodeRoots", "NodeLayout", "PythonLayout", "Service", "SuspiciousDir",
    "code_files", "code_roots", "find_module", "find_service", "image_settings", "kind_of",
    "native_code", "node_layout", "node_roots", "parse_node_argv", "parse_python_argv",
    "python_layout", "python_roots", "python_sys_path", "suspicious_code_dirs",
]
