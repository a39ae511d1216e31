"""Just enough of a POSIX shell reader to tell what an entrypoint script or a ``sh -c`` string
finally runs, without running it.

A script is read into commands (``Command``): each with its words, the nesting depth of the
compound statement it sits in (``if``/``case``/``for``/``while``/``{``) and the function it
belongs to. ``analyse`` then follows the top level: ``cd``, ``export``/assignments and
``set --`` change the state, and the last top-level command (usually ``exec "$@"`` or
``exec PROGRAM ...``) names what runs. Anything it cannot follow is reported, never guessed
silently.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from sconify.conversion.codepaths.common import join

OPEN = {"if", "while", "until", "case", "for", "{", "select"}
CLOSE = {"fi", "done", "esac", "}"}
INFIX = {"then", "do", "else", "elif", "!", "time"}
SEPARATORS = {";", "&&", "||", "&", "|", ";;", ";&", "|&"}
REDIRECTS = {">", ">>", "<", "<<", "<<-", ">&", "<&", ">|", "&>", "&>>", "<>", "<<<"}
BUILTINS = {
    ":", "true", "false", "echo", "printf", "set", "shift", "export", "unset", "readonly", "local",
    "trap", "umask", "ulimit", "wait", "exit", "return", "test", "[", "[[", "source", ".", "cd",
    "shopt", "eval", "read", "declare", "typeset", "alias", "sleep", "mkdir", "chmod", "chown",
    "rm", "cp", "mv", "ln", "touch", "cat", "envsubst", "sed", "find", "command", "type", "hash",
}
FUNCTION_DEF = re.compile(r"([A-Za-z_][A-Za-z0-9_.:-]*)\(\)(\{?)")
ASSIGNMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", re.S)
VARIABLE = re.compile(r"\$(?:\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*|[0-9@*#?$!-]))")


class ShellUnreadable(Exception):
    """The script does something this reader cannot follow; the message says what."""


@dataclass
class Command:
    words: list[str] | None  # None: a line that could not be tokenised
    depth: int
    function: str  # "" at top level
    raw: str
    separator: str = ""  # what follows it: ";", "&&", "|"...
    conditional: bool = False  # inside an if/case/loop/{...}, or after "||"
    piped: bool = False  # after "|": the pipeline's producer is what the container runs

    @property
    def text(self) -> str:
        return " ".join(self.words) if self.words is not None else self.raw.strip()


@dataclass
class Outcome:
    """What the shell finally runs: ``argv`` (expanded), from ``cwd`` with ``env``."""

    argv: list[str]
    cwd: str
    env: dict[str, str]
    reasons: list[str] = field(default_factory=list)
    execs: bool = True  # False: run as a child of the shell (no exec)


def strip_comment(line: str) -> str:
    """``line`` without its ``#`` comment (a ``#`` starting a word, outside quotes)."""
    quote = ""
    escaped = False
    for index, char in enumerate(line):
        if escaped:
            escaped = False
            continue
        if char == "\\" and quote != "'":
            escaped = True
        elif quote:
            if char == quote:
                quote = ""
        elif char in "'\"`":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1] in " \t;&|("):
            return line[:index]
    return line


def tokenize(text: str) -> list[str]:
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split = True
    lexer.commenters = ""
    return list(lexer)


def parse(text: str) -> list[Command]:
    """The commands of a script, in order, with their nesting."""
    commands: list[Command] = []
    lines = text.replace("\\\r\n", " ").replace("\\\n", " ").splitlines()
    depth = 0
    function = ""
    function_depth = 0
    heredoc: tuple[str, bool] | None = None
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if heredoc is not None:
            if (line.lstrip("\t") if heredoc[1] else line) == heredoc[0]:
                heredoc = None
            continue
        code = strip_comment(line).strip()
        if not code or code.startswith("#!"):
            continue
        tokens = None
        joined = code
        for extra in range(50):  # a quoted string may span lines
            try:
                tokens = tokenize(joined)
                break
            except ValueError:
                if index + extra >= len(lines):
                    break
                joined += "\n" + lines[index + extra]
        if tokens is None:
            commands.append(Command(None, depth, function, code, conditional=depth > 0))
            continue
        index += joined.count("\n")
        for position, token in enumerate(tokens):
            if token in ("<<", "<<-") and position + 1 < len(tokens):
                word = tokens[position + 1]
                strip_tabs = token == "<<-" or word.startswith("-")
                heredoc = (word[1:] if token == "<<" and word.startswith("-") else word, strip_tabs)
        current: list[str] = []
        previous = ""

        def flush(separator: str) -> None:
            nonlocal depth, function, function_depth, previous
            words = list(current)
            current.clear()
            while words:
                head = words[0]
                match = FUNCTION_DEF.fullmatch(head)
                if head == "function" and len(words) > 1:
                    function, function_depth = words[1].rstrip("()"), depth
                    depth += 1 if words[-1] == "{" else 0
                    words = []
                elif match:
                    function, function_depth = match.group(1), depth
                    if match.group(2) or words[1:2] == ["{"]:
                        depth += 1
                    words = []
                elif head in OPEN:
                    depth += 1
                    words = words[1:]
                    if head in ("for", "select", "case"):
                        words = []  # its list / word, not a command
                elif head in CLOSE:
                    depth = max(0, depth - 1)
                    words = words[1:]
                    if function and depth <= function_depth and head == "}":
                        function = ""
                elif head in INFIX:
                    words = words[1:]
                else:
                    break
            if words:
                inner = depth - (function_depth + 1 if function else 0)
                commands.append(Command(words, depth, function, code, separator,
                                        conditional=inner > 0 or previous == "||", piped=previous in ("|", "|&")))
            previous = separator

        for token in tokens:
            if token in SEPARATORS:
                flush(token)
            else:
                current.append(token)
        flush("")
    return commands


def expand(word: str, params: list[str], env: dict[str, str], local: dict[str, str]) -> list[str] | None:
    """The words ``word`` becomes; None when it needs a command substitution or arithmetic."""
    if "$(" in word or "`" in word or "$((" in word:
        return None
    if word in ("$@", "${@}", "$*", "${*}"):
        return list(params)

    def value(match: re.Match) -> str:
        name = match.group(1) if match.group(1) is not None else match.group(2)
        default = ""
        for operator in (":-", "-", ":=", "="):
            if operator in name and not name.startswith("#"):
                name, _, default = name.partition(operator)
                break
        if name.isdigit():
            position = int(name)
            return params[position - 1] if 0 < position <= len(params) else default
        if name == "#":
            return str(len(params))
        if name in ("@", "*"):
            return " ".join(params)
        found = local.get(name, env.get(name))
        return found if found else default

    return [VARIABLE.sub(value, word)]


def strip_redirections(words: list[str]) -> list[str]:
    kept: list[str] = []
    skip = False
    for word in words:
        if skip:
            skip = False
            continue
        if word in REDIRECTS:
            if kept and kept[-1].isdigit():
                kept.pop()
            skip = True
            continue
        kept.append(word)
    return kept


def is_assignment(word: str) -> bool:
    return ASSIGNMENT.fullmatch(word) is not None


def analyse(text: str, params: list[str], cwd: str, env: dict[str, str], where: str,
            is_command) -> Outcome:
    """What the shell text ``text`` (a script or a ``-c`` string) finally runs.

    ``params``: its positional parameters; ``is_command(name, cwd, env)``: whether ``name``
    is a command the shell would find (for the ``set -- node "$@"`` idiom of entrypoints).
    Raises ShellUnreadable when the final command cannot be told.
    """
    commands = parse(text)
    functions: dict[str, list[Command]] = {}
    for command in commands:
        if command.function:
            functions.setdefault(command.function, []).append(command)
    top = [c for c in commands if not c.function]
    return _run(top, functions, list(params), cwd, dict(env), {}, where, is_command, 0)


def _run(commands: list[Command], functions: dict[str, list[Command]], params: list[str], cwd: str,
         env: dict[str, str], local: dict[str, str], where: str, is_command, level: int) -> Outcome:
    reasons: list[str] = []
    final: Command | None = None
    for position, command in enumerate(commands):
        words = command.words
        if words is None:
            final = command
            continue
        words = strip_redirections(words)
        if not words:
            continue
        if command.piped:
            reasons.append(f"{where}: {command.text[:60]!r} only reads the output of the command before it")
            continue
        if command.conditional:
            rewritten = _conditional_set(words, params, cwd, env, local, where, is_command, reasons)
            if rewritten is not None:
                params = rewritten
            final = command
            continue
        head = words[0]
        if head == "cd" and len(words) > 1:
            target = expand(words[1], params, env, local)
            if target:
                cwd = join(cwd, target[0])
                reasons.append(f"{where}: cd {cwd}")
        elif head == "export":
            for word in words[1:]:
                match = ASSIGNMENT.fullmatch(word)
                if match:
                    value = expand(match.group(2), params, env, local)
                    env[match.group(1)] = value[0] if value else ""
                elif word in local:
                    env[word] = local.pop(word)
        elif head == "set" and len(words) > 1 and words[1] == "--":
            new: list[str] = []
            for word in words[2:]:
                new.extend(expand(word, params, env, local) or [word])
            params = new
            reasons.append(f"{where}: set -- {' '.join(new)}")
        elif head == "shift":
            count = int(words[1]) if len(words) > 1 and words[1].isdigit() else 1
            params = params[count:]
        elif all(is_assignment(w) for w in words):
            for word in words:
                name, value = ASSIGNMENT.fullmatch(word).groups()
                expanded = expand(value, params, env, local)
                (env if name in env else local)[name] = expanded[0] if expanded else ""
        final = command
        if head == "exec" and _exec_words(words) and position != len(commands) - 1:
            final = command
            break  # nothing after an exec runs
    if final is None:
        raise ShellUnreadable(f"{where} runs no command")
    if final.words is None:
        raise ShellUnreadable(f"{where}: its last command {final.raw[:80]!r} cannot be read")
    words = strip_redirections(final.words)
    if final.conditional:
        execs = [c.text for c in commands if c.words and c.words[0] == "exec" and _exec_words(c.words)]
        raise ShellUnreadable(
            f"{where} ends in a conditional ({final.text[:60]!r}); its exec lines: "
            + ("; ".join(repr(e[:60]) for e in execs) if execs else "none")
        )
    execs = words[0] == "exec"
    run = _exec_words(words) if execs else words
    if not run:
        raise ShellUnreadable(f"{where}: its last command {final.text[:60]!r} runs no program")
    prefix_env = dict(env)
    while run and is_assignment(run[0]):
        name, value = ASSIGNMENT.fullmatch(run[0]).groups()
        expanded = expand(value, params, env, local)
        prefix_env[name] = expanded[0] if expanded else ""
        reasons.append(f"{where}: {name}={prefix_env[name]} for the command")
        run = run[1:]
    if not run:
        raise ShellUnreadable(f"{where}: its last command {final.text[:60]!r} only assigns variables")
    if run[0] in functions and level < 4:
        args: list[str] = []
        for word in run[1:]:
            args.extend(expand(word, params, env, local) or [word])
        reasons.append(f"{where}: calls its function {run[0]}()")
        inner = _run(functions[run[0]], functions, args, cwd, prefix_env, dict(local),
                     f"{where} {run[0]}()", is_command, level + 1)
        inner.reasons[:0] = reasons
        return inner
    argv: list[str] = []
    for word in run:
        expanded = expand(word, params, prefix_env, local)
        if expanded is None:
            if not argv:
                raise ShellUnreadable(f"{where}: the program of {final.text[:60]!r} comes from a command substitution")
            argv.append(word)
        else:
            argv.extend(w for w in expanded if w or word not in ("$@", "${@}", "$*", "${*}"))
    if not argv or not argv[0]:
        raise ShellUnreadable(f"{where}: {final.text[:60]!r} runs nothing (its arguments are empty)")
    if argv[0] in BUILTINS or argv[0] in ("exit", "wait", "return"):
        raise ShellUnreadable(f"{where}: its last command is {final.text[:60]!r}, not a program")
    shown = final.text if len(final.text) < 80 else final.text[:77] + "..."
    if execs:
        reasons.append(f"{where} ends in {shown!r}: runs {' '.join(argv)}")
    else:
        reasons.append(f"{where} ends in {shown!r} (no exec: the shell stays its parent): runs {' '.join(argv)}")
    return Outcome(argv, cwd, prefix_env, reasons, execs)


def _exec_words(words: list[str]) -> list[str]:
    """The command of an ``exec`` line ([] for ``exec >log 2>&1``)."""
    rest = words[1:]
    while rest and rest[0].startswith("-") and rest[0] != "--":
        rest = rest[2:] if rest[0] == "-a" else rest[1:]
    if rest[:1] == ["--"]:
        rest = rest[1:]
    return rest


def _conditional_set(words: list[str], params: list[str], cwd: str, env: dict[str, str],
                     local: dict[str, str], where: str, is_command, reasons: list[str]) -> list[str] | None:
    """``set -- PROGRAM "$@"`` inside an ``if``: the entrypoint idiom of the official images
    (node, redis...: run PROGRAM when the first argument is an option or not a command). Its
    condition is not evaluated; the idiom's intent is: prepend when there are no arguments,
    the first one starts with '-', or it is not a command (``command -v`` fails, or it is a
    file without the execute bit). ``set -- PROGRAM`` alone applies when there are none."""
    if words[:2] != ["set", "--"] or len(words) < 3:
        return None
    forwards = any(w in ("$@", "${@}", "$*", "${*}") for w in words[2:])
    program = [w for w in words[2:] if w not in ("$@", "${@}", "$*", "${*}")]
    if not program:
        return None
    if not forwards:
        if params:
            return None
        reasons.append(f"{where}: no arguments, so it sets them to {' '.join(program)}")
        return program
    first = params[0] if params else ""
    if not params:
        why = "there are no arguments"
    elif first.startswith("-"):
        why = f"the first argument {first!r} is an option"
    elif not is_command(first, cwd, env):
        why = f"the first argument {first!r} is not a command"
    else:
        reasons.append(
            f"{where} prepends {' '.join(program)!r} when its first argument is an option or not a "
            f"command: {first!r} is a command, the arguments stay as they are"
        )
        return None
    new = program + params
    reasons.append(f"{where} prepends {' '.join(program)!r} ({why}): now {' '.join(new)}")
    return new
