"""Which program the container finally runs: ENTRYPOINT + CMD followed as the kernel, the shell
and the usual wrappers would, without running anything.

``find_service``: exec form through the image's PATH; shell form (``/bin/sh -c "..."``) and entrypoint
shell scripts read by ``codepaths.shell`` (``exec "$@"`` hands over to CMD, ``set -- node "$@"``
is understood); ``#!`` scripts through their interpreter (a venv's ``bin/python`` symlink, ``env
python3`` through PATH); ``env``, ``tini``, ``dumb-init``, ``gosu``, ``su-exec`` stepped over.
The scripts crossed on the way are code and listed in ``Service.scripts``.
"""

from __future__ import annotations

import posixpath
import shlex
from dataclasses import dataclass, field

from sconify.conversion.codepaths import shell
from sconify.conversion.codepaths.common import (
    DEFAULT_PATH,
    ELF_MAGIC,
    is_executable,
    is_file,
    join,
    link_hops,
    read_bytes,
    read_text,
    which,
)
from sconify.errors import UsageError
from sconify.conversion.recipe import builtin_recipes

SHELLS = {"sh", "bash", "dash", "ash", "ksh", "mksh", "zsh", "yash", "posh"}
MAX_STEPS = 16


@dataclass
class Service:
    """The program the container runs, as the kernel finally executes it.

    ``executable``: the ELF (absolute, symlinks resolved): what is measured. ``invoked``: the
    path execve got (absolute, symlinks kept: ``/opt/venv/bin/python``; CPython finds its venv
    from it). ``argv``: as that program sees it (``argv[0]`` as passed, then the interpreter's
    options, script or ``-m module``...). ``workdir``/``env``/``user``: its cwd, environment and
    user at exec (WORKDIR and Env, changed by ``cd``, assignments, ``env``, ``gosu`` on the way).
    ``scripts``: the scripts crossed (entrypoint shell scripts, console scripts; absolute,
    resolved), which are code. ``kind``: the built-in recipe whose executable globs match
    ("python", "node") or "". ``requested``: what named it, for messages ("ENTRYPOINT/CMD
    docker-entrypoint.sh", "--binary /usr/bin/python3.11"). ``reasons``: one line per step.
    """

    executable: str
    invoked: str
    argv: list[str]
    workdir: str
    env: dict[str, str]
    user: str = ""
    scripts: list[str] = field(default_factory=list)
    kind: str = ""
    requested: str = ""
    reasons: list[str] = field(default_factory=list)


def image_settings(config: dict) -> tuple[list[str], list[str], str, dict[str, str], str]:
    """(Entrypoint, Cmd, WorkingDir, Env, User) of an image config (the whole OCI config or
    its inner ``config`` object)."""
    inner = config.get("config") if isinstance(config.get("config"), dict) else config
    inner = inner or {}
    env: dict[str, str] = {}
    for item in inner.get("Env") or []:
        name, _, value = item.partition("=")
        env[name] = value
    return (list(inner.get("Entrypoint") or []), list(inner.get("Cmd") or []),
            inner.get("WorkingDir") or "/", env, inner.get("User") or "")


def kind_of(*paths: str) -> str:
    """The built-in recipe ("python", "node") whose executable globs match one of ``paths``."""
    recipes = builtin_recipes()
    for path in paths:
        for recipe in recipes:
            if recipe.matches_executable(path):
                return recipe.name
    return ""


def find_service(fs, config: dict, binary: str | None = None) -> Service:
    """The service the image's ENTRYPOINT + CMD runs (see the module docstring).

    With ``binary`` (``--binary``), that file (through PATH and WORKDIR, an ELF) is the
    executable; ENTRYPOINT/CMD is still followed for its scripts and, when it leads to that
    same file, for its argv. Raises UsageError with a one-line message naming what was found
    and the ``--binary`` to pass when it cannot tell.
    """
    entrypoint, cmd, workdir, env, user = image_settings(config)
    walk = _Walk(fs, env, workdir, user)
    command = entrypoint + cmd
    requested = f"ENTRYPOINT/CMD {command[0]}" if command else ""
    if binary is None:
        if not command:
            raise UsageError(
                "the image has no ENTRYPOINT or CMD, so nothing tells which program is the service; "
                f"pass --binary PATH{walk.suggestion()}"
            )
        service = walk.run(command, _origin(entrypoint, cmd))
        service.requested = requested
        return service
    path_var = env.get("PATH", DEFAULT_PATH)
    found = which(fs, binary, path_var, workdir)
    if found is None:
        raise UsageError(
            f"--binary {binary} does not exist in the image (or is not an executable file); pass the "
            f"path of the interpreter inside the image{walk.suggestion(', e.g. ')}"
        )
    hops = link_hops(fs, found)
    head = read_bytes(fs, hops[-1], 4) or b""
    if not head.startswith(ELF_MAGIC):
        raise UsageError(f"--binary {binary} resolves to {hops[-1]}, which is not an ELF executable; "
                         f"pass the interpreter itself{walk.suggestion(', e.g. ')}")
    try:
        service = walk.run(command, _origin(entrypoint, cmd)) if command else None
    except UsageError as exc:
        service = None
        walk.reasons.append(f"ENTRYPOINT/CMD not followed to the end: {exc}")
    if service is not None and service.executable == hops[-1]:
        service.requested = f"--binary {binary}"
        service.reasons.append(f"--binary {binary} is the program ENTRYPOINT/CMD runs")
        return service
    reasons = list(walk.reasons)
    if service is not None:
        reasons.append(f"--binary {binary} overrides {service.executable}, which ENTRYPOINT/CMD runs: "
                       "its argv is unknown, code roots follow from WORKDIR")
    reasons.append(f"--binary {describe_lookup(binary, hops)}")
    return Service(
        executable=hops[-1], invoked=found, argv=[binary], workdir=workdir, env=dict(env), user=user,
        scripts=list(walk.scripts), kind=kind_of(hops[-1], found), requested=f"--binary {binary}",
        reasons=reasons,
    )


def _origin(entrypoint: list[str], cmd: list[str]) -> str:
    if entrypoint and cmd:
        return "ENTRYPOINT"
    return "ENTRYPOINT" if entrypoint else "CMD"


class _Walk:
    """The state along the exec chain: environment, cwd, user, scripts crossed, reasons."""

    def __init__(self, fs, env: dict[str, str], cwd: str, user: str) -> None:
        self.fs = fs
        self.env = dict(env)
        self.cwd = cwd
        self.user = user
        self.scripts: list[str] = []
        self.reasons: list[str] = []

    @property
    def path_var(self) -> str:
        return self.env.get("PATH", DEFAULT_PATH)

    def is_command(self, name: str, cwd: str, env: dict[str, str]) -> bool:
        """``command -v NAME`` succeeds and NAME is not a file lacking the execute bit."""
        if "/" not in name and is_file(self.fs, join(cwd, name)) and not is_executable(self.fs, join(cwd, name)):
            return False
        return which(self.fs, name, env.get("PATH", DEFAULT_PATH), cwd) is not None

    def suggestion(self, lead: str = "; e.g. ") -> str:
        """", e.g. --binary /usr/bin/python3.11" for the interpreters on the image's PATH."""
        found: list[str] = []
        for name in ("python3", "python", "node", "nodejs"):
            path = which(self.fs, name, self.path_var, self.cwd)
            if path is not None:
                real = link_hops(self.fs, path)[-1]
                if real not in found:
                    found.append(real)
        if not found:
            return ""
        return lead + " or ".join(f"--binary {p}" for p in found[:2])

    def fail(self, message: str) -> UsageError:
        steps = "; ".join(self.reasons[-3:])
        where = f" (after: {steps})" if steps else ""
        return UsageError(f"cannot tell which program is the service: {message}{where}; pass --binary "
                          f"with the service's interpreter{self.suggestion()}")

    def run(self, argv: list[str], how: str) -> Service:
        argv = list(argv)
        for _ in range(MAX_STEPS):
            if not argv or not argv[0]:
                raise self.fail(f"{how} runs an empty command")
            name = argv[0]
            found = which(self.fs, name, self.path_var, self.cwd)
            if found is None:
                where = "" if "/" in name else f" on PATH {self.path_var}"
                raise self.fail(f"{how} runs {name!r}, which is not an executable file in the image{where}")
            hops = link_hops(self.fs, found)
            real = hops[-1]
            self.reasons.append(f"{how} {describe_lookup(name, hops)}")
            head = read_bytes(self.fs, real, 512) or b""
            if head.startswith(ELF_MAGIC):
                names = {posixpath.basename(found), posixpath.basename(real)}
                if names & SHELLS or (posixpath.basename(real) == "busybox" and posixpath.basename(found) in SHELLS):
                    argv, how = self.shell_command(argv, found)
                    continue
                unwrapped = self.unwrap(argv, posixpath.basename(found), posixpath.basename(real))
                if unwrapped is not None:
                    argv, how = unwrapped
                    continue
                kind = kind_of(real, found)
                return Service(
                    executable=real, invoked=found, argv=argv, workdir=self.cwd, env=dict(self.env),
                    user=self.user, scripts=list(self.scripts), kind=kind, reasons=list(self.reasons),
                )
            if head.startswith(b"#!"):
                interpreter, argument = parse_shebang(head)
                if not interpreter:
                    raise self.fail(f"{real} starts with '#!' but names no interpreter")
                if real not in self.scripts:
                    self.scripts.append(real)
                if posixpath.basename(interpreter) in SHELLS:
                    text = read_text(self.fs, real) or ""
                    self.reasons.append(f"{found} is a {posixpath.basename(interpreter)} script (code: embedded)")
                    argv, how = self.shell_script(text, found, argv[1:])
                    continue
                if "/" not in interpreter:
                    interpreter = "./" + interpreter  # the kernel does not search PATH
                self.reasons.append(f"{found} is a script for #!{interpreter}"
                                    + (f" {argument}" if argument else "") + " (code: embedded)")
                argv = [interpreter, *([argument] if argument else []), found, *argv[1:]]
                how = f"#! of {found}:"
                continue
            raise self.fail(f"{how} runs {real}, which is neither an ELF executable nor a #! script")
        raise self.fail(f"{how} goes through more than {MAX_STEPS} programs and scripts")

    # --- shells -------------------------------------------------------------------------

    def shell_command(self, argv: list[str], found: str) -> tuple[list[str], str]:
        """``sh [options] -c STRING [$0 [args]]`` or ``sh SCRIPT [args]``."""
        rest = argv[1:]
        command_mode = False
        while rest and rest[0][:1] in ("-", "+") and rest[0] not in ("-", "--"):
            option = rest.pop(0)
            if option in ("-o", "+o") and rest:
                rest.pop(0)
            elif not option.startswith("--") and "c" in option[1:]:
                command_mode = True
        if rest[:1] in (["--"], ["-"]):
            rest = rest[1:]
        name = posixpath.basename(found)
        if command_mode:
            if not rest:
                raise self.fail(f"{name} -c has no command string")
            text, params = rest[0], rest[2:]
            return self.analyse(text, params, f"{name} -c {text!r}"), f"{name} -c:"
        if not rest:
            raise self.fail(f"{found} runs an interactive shell, no program")
        script = join(self.cwd, rest[0])
        if not is_file(self.fs, script):
            raise self.fail(f"{name} runs the script {rest[0]}, which is not in the image")
        real = link_hops(self.fs, script)[-1]
        if real not in self.scripts:
            self.scripts.append(real)
        self.reasons.append(f"{name} {rest[0]}: a shell script (code: embedded)")
        return self.shell_script(read_text(self.fs, real) or "", script, rest[1:])

    def shell_script(self, text: str, path: str, params: list[str]) -> tuple[list[str], str]:
        outcome = self.analyse(text, params, posixpath.basename(path))
        return outcome, f"{posixpath.basename(path)}:"

    def analyse(self, text: str, params: list[str], where: str) -> list[str]:
        try:
            outcome = shell.analyse(text, params, self.cwd, self.env, where, self.is_command)
        except shell.ShellUnreadable as exc:
            raise self.fail(str(exc)) from None
        self.reasons.extend(outcome.reasons)
        self.cwd = outcome.cwd
        self.env = outcome.env
        return outcome.argv

    # --- wrappers -----------------------------------------------------------------------

    def unwrap(self, argv: list[str], invoked: str, real: str) -> tuple[list[str], str] | None:
        """The command an exec wrapper runs, or None when ``argv`` is no known wrapper."""
        names = {invoked, real}
        rest = argv[1:]
        if "env" in names:
            return self.unwrap_env(rest), "env:"
        if names & {"tini", "tini-static", "catatonit"}:
            takes_value = {"-p", "-e"}
            return _after_options(rest, takes_value), f"{invoked}:"
        if "dumb-init" in names:
            return _after_options(rest, {"-r", "--rewrite"}), "dumb-init:"
        if names & {"gosu", "su-exec"}:
            if len(rest) < 2:
                raise self.fail(f"{invoked} needs a user and a command")
            self.user = rest[0]
            self.reasons.append(f"{invoked}: runs as user {rest[0]}")
            return rest[1:], f"{invoked}:"
        if "nohup" in names:
            return rest, "nohup:"
        if "nice" in names:
            return _after_options(rest, {"-n"}), "nice:"
        return None

    def unwrap_env(self, rest: list[str]) -> list[str]:
        rest = list(rest)
        while rest:
            word = rest[0]
            if word in ("-i", "--ignore-environment", "-"):
                self.env = {}
                rest.pop(0)
            elif word in ("-u", "--unset") and len(rest) > 1:
                self.env.pop(rest[1], None)
                del rest[:2]
            elif word.startswith("--unset="):
                self.env.pop(word.partition("=")[2], None)
                rest.pop(0)
            elif word in ("-C", "--chdir") and len(rest) > 1:
                self.cwd = join(self.cwd, rest[1])
                del rest[:2]
            elif word.startswith("--chdir="):
                self.cwd = join(self.cwd, word.partition("=")[2])
                rest.pop(0)
            elif word in ("-S", "--split-string") and len(rest) > 1:
                rest = shlex.split(rest[1]) + rest[2:]
            elif word.startswith("-S") and len(word) > 2:
                rest = shlex.split(word[2:]) + rest[1:]
            elif word == "--":
                rest.pop(0)
                break
            elif word.startswith("-"):
                rest.pop(0)
            elif shell.is_assignment(word):
                name, _, value = word.partition("=")
                self.env[name] = value
                self.reasons.append(f"env: {name}={value}")
                rest.pop(0)
            else:
                break
        return rest


def describe_lookup(name: str, hops: list[str]) -> str:
    """"python3 -> /usr/bin/python3 (PATH) -> /usr/bin/python3.11 (symlink)"."""
    text = name if name == hops[0] else f"{name} -> {hops[0]} (PATH)"
    if len(hops) > 1:
        text += " -> " + " -> ".join(hops[1:]) + (" (symlink)" if len(hops) == 2 else " (symlinks)")
    return text


def _after_options(rest: list[str], takes_value: set[str]) -> list[str]:
    rest = list(rest)
    while rest and rest[0].startswith("-"):
        option = rest.pop(0)
        if option == "--":
            break
        if option in takes_value and rest:
            rest.pop(0)
    return rest


def parse_shebang(head: bytes) -> tuple[str, str]:
    """(interpreter, optional argument) of a ``#!`` line, split as Linux does: the rest of the
    line after the interpreter is one argument."""
    line = head[2:].split(b"\n", 1)[0].decode("utf-8", "replace").strip()
    if not line:
        return "", ""
    interpreter, _, argument = line.replace("\t", " ").partition(" ")
    return interpreter, argument.strip()
