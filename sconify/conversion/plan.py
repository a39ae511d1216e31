"""The plan of a conversion: which executable, which code, which regions and data files,
decided from the image and the options before any byte is written.

``make_plan`` follows ENTRYPOINT/CMD to the service and its code roots (sconify.conversion.codepaths),
adds the recipe's rules, lays out the regions (sconify.conversion.volumes) and refuses what cannot be
right (--dir over code, an fspf path already taken). ``contents_to_keep`` is the guess, made
before the layers are read, of which files' bytes the conversion will need.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sconify.conversion import codepaths
from sconify.conversion.codepaths import CodeRoots, Service, code_roots, find_service, native_code, suspicious_code_dirs
from sconify.errors import UsageError
from sconify.image.model import Image
from sconify.image.rewrite import LayerRewrite, ProtectedPrefix, link_warnings, plan_rewrites
from sconify.image.rootfs import RootFS
from sconify.outputs.manifest import LABEL_PREFIX
from sconify.conversion.recipe import Placeholders, builtin_recipes, has_extension, load_recipe
from sconify.conversion.select import (
    DEFAULT_PATH,
    Executable,
    absolute,
    app_dir,
    command_of,
    env_of,
    interpreter_version,
    recipe_for,
    region_of,
    rel,
    select_code,
    select_data,
    try_resolve,
    workdir_of,
)
from sconify.conversion.volumes import fspf_path_of, is_volume

if TYPE_CHECKING:
    from sconify.conversion.pipeline import ConvertOptions

# Why a directory is in Plan.protected besides the encrypted volumes.
ENCRYPTED_CODE = "encrypted code"


@dataclass
class Plan:
    """What a conversion will do, decided before any byte is written."""

    executable: Executable
    app_dir: str | None
    code_files: list[str]
    regions: list[dict]  # {"path", "kind", "protection"}, sorted by path
    data_files: dict[str, list[str]]  # volume path -> files (relative) to protect
    service: Service | None = None  # how ENTRYPOINT/CMD reaches the executable (sconify.conversion.codepaths)
    roots: CodeRoots | None = None  # where its interpreter loads code from, and why
    warnings: list[str] = field(default_factory=list)  # code the measurement may miss
    # Directories whose plaintext must leave every input layer (sconify.image.rewrite), and the
    # input layers rewritten without it: the encrypted volumes and the --encrypted-code roots.
    protected: list[ProtectedPrefix] = field(default_factory=list)
    rewrites: list[LayerRewrite] = field(default_factory=list)
    # --encrypted-code: the code files (relative) embedded encrypted under the code key; they are
    # removed from the rootfs whatever --keep-embedded says, and their roots are in `protected`.
    encrypted_code: list[str] = field(default_factory=list)

    @property
    def encrypted_code_roots(self) -> list[str]:
        """The --encrypted-code directories (absolute), as listed in ``protected``."""
        return [prefix.path for prefix in self.protected if prefix.reason == ENCRYPTED_CODE]

    def region(self, path: str) -> dict:
        """The region whose path is ``path``."""
        return next(r for r in self.regions if r["path"] == path)

    @property
    def volumes(self) -> list[dict]:
        """The regions with an fspf of their own (sconify.conversion.volumes), in path order."""
        return [region for region in self.regions if is_volume(region)]

    def removed_code(self) -> list[str]:
        """The code files whited out of the rootfs (without --keep-embedded): encrypted code
        always goes, shared objects included (they are loaded from a memfd)."""
        encrypted = set(self.encrypted_code)
        return sorted(set(removable_code(self.code_files, self.service)) | encrypted)

    def data_paths(self) -> list[str]:
        """The files of every region, region by region."""
        return [path for files in self.data_files.values() for path in files]


def make_plan(image: Image, fs: RootFS, options: ConvertOptions) -> Plan:
    config = image.config
    labels = (config.get("config") or {}).get("Labels") or {}
    if LABEL_PREFIX + "mrenclave" in labels:
        raise UsageError(
            f"the input is already a converted image (label {LABEL_PREFIX}mrenclave "
            f"{labels[LABEL_PREFIX + 'mrenclave'][:16]}...); convert the original image instead "
            f"(its config digest is the label {LABEL_PREFIX}base.config-digest)"
        )
    # The service as the container runs it (shell forms, entrypoint scripts, console scripts and
    # venvs followed to the ELF), and where its interpreter loads code from (sconify.conversion.codepaths).
    service = find_service(fs, config, binary=options.binary)
    executable = Executable(path=rel(service.executable), requested=service.requested,
                            recipe=load_recipe(options.recipe) if options.recipe else recipe_for(rel(service.executable)))
    check_extra_code(fs, options)
    recipe = executable.recipe.with_extra_code([*options.fs_dirs, *options.encrypted_code], options.fs_files)
    application = app_dir(config, fs)
    placeholders = Placeholders(version=interpreter_version(executable.path, fs), app=application)
    regions = plan_regions(recipe, options, fs)
    data_roots = {rel(r["path"]): r for r in regions if r["path"] != "/"}
    roots = code_roots(fs, service)
    derived = set(codepaths.code_files(fs, roots)) | {rel(script) for script in service.scripts}
    check_code_not_data(derived, regions)
    derived = {p for p in derived if region_of(p, regions)["path"] == "/" or region_of(p, regions)["kind"] != "kernel"}
    code_files = sorted(
        (derived | set(select_code(recipe, fs, placeholders, exclude_roots=list(data_roots)))) - {executable.path}
    )
    warnings = [
        f"{missing} is code the interpreter will look for, but the image lacks it: it is not measured"
        for missing in roots.missing
    ]
    covered = [*options.fs_dirs, *options.encrypted_code, *options.fs_files,
               *(r["path"] for r in regions if r["path"] != "/")]
    for place in suspicious_code_dirs(fs, roots, service.workdir, covered=covered,
                                      path_var=service.env.get("PATH", DEFAULT_PATH)):
        warnings.append(f"{place} looks like code but is on no path the interpreter searches: it is not "
                        f"measured; embed it with --fs-dir {place.path} if the service loads it")
    if warnings and options.strict:
        raise UsageError(f"--strict: {warnings[0]}" + (f" (and {len(warnings) - 1} more)" if len(warnings) > 1 else ""))
    for path in code_files:
        if (region := region_of(path, regions))["path"] != "/":
            raise UsageError(
                f"{absolute(path)} is both code (--fs-file/--fs-dir or the recipe) and data (region "
                f"{region['path']}); a file is one or the other: drop it from one of them"
            )
    if not code_files and not options.fs_dirs and not options.fs_files:
        raise UsageError(
            f"recipe {recipe.name} found no code files for {absolute(executable.path)} in the image; "
            "check --recipe, or add code with --fs-dir DIR / --fs-file FILE"
        )
    region = region_of(executable.path, regions)
    if region["path"] != "/" and region["protection"] != "not-protected":
        raise UsageError(
            f"the executable {absolute(executable.path)} lies in the {region['protection']} region "
            f"{region['path']}; it is measured, not shielded: protect a directory that does not hold it"
        )
    volumes = [region for region in regions if is_volume(region)]
    fspf_files = [rel(fspf_path_of(volume["path"])) for volume in volumes]
    for path in fspf_files:
        if path in fs.entries:
            raise UsageError(
                f"the image already has {absolute(path)}, where the fspf of volume "
                f"{posixpath.dirname(absolute(path))} goes; remove it from the input image or protect "
                "another directory"
            )
    secret_roots = encrypted_code_roots(fs, options)
    encrypted_code = [p for p in code_files if any(under(p, root) for root in secret_roots)]
    check_encrypted_code(executable, service, secret_roots)
    fspf_excluded = {executable.path, *fspf_files, *encrypted_code}
    if not options.keep_embedded:  # code kept in place is in a '/' volume, as the libraries are
        fspf_excluded.update(removable_code(code_files, service))
    data_files: dict[str, list[str]] = {}
    for region in volumes:
        if region["path"] == "/":
            candidates = [p for p, entry in fs.entries.items() if entry.kind in ("file", "hardlink")]
        elif options.generic and try_resolve(fs, region["path"]) is None:
            candidates = []  # a declared volume the image lacks: the data layer makes its directory
        else:
            option = "--dir" if region["protection"] == "encrypted" else "--authenticated"
            candidates = select_data(fs, [region["path"]], option)
        data_files[region["path"]] = sorted(
            p for p in candidates if p not in fspf_excluded and region_of(p, regions) is region
        )
    protected = protected_prefixes(volumes, secret_roots)
    rewrites = plan_rewrites(fs, protected)
    warnings += link_warnings(rewrites)
    return Plan(executable, application, code_files, regions, data_files, service=service, roots=roots,
                warnings=warnings, protected=protected, rewrites=rewrites, encrypted_code=encrypted_code)


def protected_prefixes(volumes: list[dict], secret_roots: list[str]) -> list[ProtectedPrefix]:
    """The encrypted volumes and the --encrypted-code roots: the data layer holds the volumes'
    ciphertext and the embedfs the code's, so their plaintext leaves the input layers.
    Authenticated volumes keep their files where they are (their protected form is the
    plaintext, checked against the fspf), and ephemeral regions are empty in-memory places:
    neither is listed."""
    return [
        *(ProtectedPrefix(volume["path"], "encrypted volume") for volume in volumes
          if volume["protection"] == "encrypted" and volume["path"] != "/"),
        *(ProtectedPrefix(absolute(root), ENCRYPTED_CODE) for root in secret_roots),
    ]


def under(path: str, root: str) -> bool:
    """Whether relative ``path`` is ``root`` or below it."""
    return path == root or path.startswith(root + "/")


def encrypted_code_roots(fs: RootFS, options: ConvertOptions) -> list[str]:
    """The --encrypted-code directories, relative and resolved through the image's symlinks."""
    roots = []
    for path in options.encrypted_code:
        resolved = try_resolve(fs, path)
        if not resolved:
            raise UsageError(f"--encrypted-code {path} is not a directory of the image; pass a path inside the image")
        roots.append(resolved)
    return sorted(set(roots))


def check_encrypted_code(executable: Executable, service: Service | None, roots: list[str]) -> None:
    """What must stay on disk in plaintext cannot be encrypted code: the executable (the kernel
    maps it) and the scripts crossed to start the service (the kernel and the shell read them)."""
    for root in roots:
        for path, what in [(executable.path, "the executable"),
                           *((rel(s), "a script that starts the service") for s in (service.scripts if service else []))]:
            if under(path, root):
                raise UsageError(
                    f"--encrypted-code {absolute(root)} holds {absolute(path)}, {what}: the kernel or the shell "
                    "reads it before the runtime starts, so it cannot be encrypted; encrypt a directory that "
                    "holds only code the interpreter loads"
                )


MERGED_USR = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")  # /X is a link to /usr/X on most bases


def contents_to_keep(config: dict, options: ConvertOptions) -> Callable[[str], bool] | None:
    """A guess, made before the layers are read, of the files whose contents the conversion may
    read: the recipe's code (the recipe of the command the config or --binary names, or
    --recipe), the data regions, the library search path, PATH and the command's own files.
    The index pass keeps only these in its temp tars (the rest of an image is often most of
    its bytes). A file guessed wrong is read by a second pass over its layer: slower, the same
    result. None (keep everything) when there is no guess to make, or everything is read
    (--authenticate-root)."""
    if options.authenticate_root:
        return None
    command = command_of(config)
    recipe = load_recipe(options.recipe) if options.recipe else None
    if recipe is None:
        name = options.binary or (command[0] if command else "")
        recipe = next((r for r in builtin_recipes() if name and r.matches_executable(name)), None)
        if recipe is None:
            return None
    recipe = recipe.with_extra_code([*options.fs_dirs, *options.encrypted_code], options.fs_files)
    workdir = workdir_of(config)
    apps = {workdir} | {posixpath.dirname(posixpath.join(workdir, arg)) for arg in command[1:] if not arg.startswith("-")}
    apps = {rel(app) for app in apps} - {""}
    trees = [*options.encrypted_dirs, *options.authenticated_dirs, *recipe.encrypted, *recipe.authenticated]
    files = [*filter(None, [options.binary]), *recipe.candidates,
             *(posixpath.join(workdir, arg) for arg in command if not arg.startswith("-"))]
    directories = [*env_of(config).get("PATH", DEFAULT_PATH).split(":"), *recipe.search_path]
    by_extension: list[tuple[str, tuple[str, ...]]] = []
    for rule in recipe.code:
        for pattern in rule.paths:
            for app in apps if "{app}" in pattern else [""]:
                root = Placeholders(version="*", app="/" + app).expand(pattern)
                if rule.extensions:
                    by_extension.append((root, rule.extensions))
                else:
                    trees.append(root)

    def pattern(path: str) -> str:
        """``path`` (absolute or relative, '*' a wildcard within a component) as a regex of
        member paths, also under /usr for a merged-usr directory."""
        parts = [re.escape(part).replace(r"\*", "[^/]*") for part in rel(posixpath.normpath("/" + path)).split("/")]
        body = "/".join(parts)
        return f"(?:usr/)?{body}" if parts[0] in MERGED_USR else body

    alternatives = [f"{pattern(t)}(?:/.*)?" for t in trees if rel(t)]
    # What sconify.conversion.codepaths may read or take beyond the recipe: /etc/pythonX.Y (Debian's
    # sitecustomize.py links there), venv and .pth files, and code in the application places.
    alternatives += [r"etc/python[0-9.]*/.*", r".*/pyvenv\.cfg", r".*\.pth", r"usr/local/bin/[^/]+",
                     r"(?:srv|opt|home|workspace|usr/src)/.*\.(?:py|pyc|so(?:\.[0-9.]+)?|js|mjs|cjs|json|node)"]
    alternatives += [f"{pattern(d)}/[^/]+" for d in directories if rel(d)]
    alternatives += [pattern(f) for f in files if rel(f)]
    alternatives += [f"{pattern(root)}/.*(?:{'|'.join(re.escape(e) for e in exts)})(?:\\.[0-9.]+)?"
                     for root, exts in by_extension]
    return re.compile("|".join(alternatives)).fullmatch if alternatives else None


def plan_scripts(plan: Plan) -> list[str]:
    """The scripts crossed to start the service (relative): embedded, and kept in place for the
    kernel and the shell, which read them before any shield runs; the launcher checks them."""
    return [rel(script) for script in plan.service.scripts] if plan.service else []


def removable_code(code_files: list[str], service: Service | None) -> list[str]:
    """The code files that leave the rootfs once embedded. Shared objects stay (as the libraries
    do: a C extension or addon finds its vendored libraries through RUNPATH $ORIGIN, its real
    directory; the runtime loads it from there once checked against the measured copy), and so
    do the scripts crossed to start the service (the kernel and the shell read them)."""
    kept = set(native_code(code_files)) | ({rel(script) for script in service.scripts} if service else set())
    return [p for p in code_files if p not in kept]


PROGRAM_EXTENSIONS = (".py", ".pyc", ".so", ".js", ".mjs", ".cjs", ".node")  # never data (".json" may be)


def check_code_not_data(code: set[str], regions: list[dict]) -> None:
    """A program file the interpreter loads is measured, not shielded: ``--dir``/``--authenticated``
    over code (``--dir /srv/app``, ``--dir /usr/lib/python3.11``) is refused, not silently obeyed."""
    for path in sorted(code):
        region = region_of(path, regions)
        if region["path"] != "/" and region["kind"] == "kernel" and has_extension(path, PROGRAM_EXTENSIONS):
            raise UsageError(
                f"{region['path']} is a data region ({region['protection']}) but holds {absolute(path)}, code the "
                f"service loads (measured, not shielded); protect a directory that holds only data"
            )


def check_extra_code(fs: RootFS, options: ConvertOptions) -> None:
    for option, paths in (("--fs-dir", options.fs_dirs), ("--encrypted-code", options.encrypted_code),
                          ("--fs-file", options.fs_files)):
        for path in paths:
            if try_resolve(fs, path) is None:
                raise UsageError(f"{option} {path} does not exist in the image; pass a path inside the image")


def plan_regions(recipe, options: ConvertOptions, fs: RootFS) -> list[dict]:
    """fspf regions: '/' plus the data directories (resolved through the image's symlinks, as
    the files under them are); explicit options win over the recipe. '/' comes first."""
    regions: dict[str, dict] = {
        "/": {
            "path": "/",
            "kind": "kernel",
            "protection": "authenticated" if options.authenticate_root else "not-protected",
        }
    }

    def add(path: str, kind: str, protection: str, option: str) -> None:
        resolved = try_resolve(fs, path)
        normal = absolute(resolved if resolved is not None else rel(path))
        if normal == "/":
            raise UsageError(f"{option} / would protect the whole image; use --authenticate-root for that")
        existing = regions.get(normal)
        if (
            existing is not None
            and existing.get("explicit")
            and (existing["kind"], existing["protection"]) != (kind, protection)
        ):
            raise UsageError(
                f"{normal} is given twice with different protection ({existing['option']} and {option}); keep one"
            )
        if existing is None or not existing.get("explicit"):
            regions[normal] = {
                "path": normal,
                "kind": kind,
                "protection": protection,
                "explicit": option.startswith("--"),
                "option": option,
            }

    for path in recipe.ephemeral:
        add(path, "ephemeral", "encrypted", f"recipe {recipe.name} [data] ephemeral")
    for path in recipe.encrypted:
        add(path, "kernel", "encrypted", f"recipe {recipe.name} [data] encrypted")
    for path in recipe.authenticated:
        add(path, "kernel", "authenticated", f"recipe {recipe.name} [data] authenticated")
    for path in options.encrypted_dirs:
        add(path, "kernel", "encrypted", "--dir")
    for path in options.authenticated_dirs:
        add(path, "kernel", "authenticated", "--authenticated")
    for region in regions.values():
        if "," in region["path"] and is_volume(region):
            raise UsageError(
                f"{region['option']} {region['path']}: a volume path cannot hold ',' (the image label "
                f"{LABEL_PREFIX}volumes lists volumes separated by commas); protect a directory without one"
            )
    return [
        {k: v for k, v in region.items() if k in ("path", "kind", "protection")}
        for region in sorted(regions.values(), key=lambda r: r["path"])
    ]
