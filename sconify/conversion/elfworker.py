"""lief in a helper process.

Importing lief costs about 0.5 s of CPU with the GIL held: a third of converting a small image.
``ElfWorker`` starts a child interpreter first thing, which imports lief on the second core while
this process reads the image; the parses that follow are quick round trips over a pipe. A plain
subprocess (not multiprocessing) so that no ``__main__`` module is re-imported in the child and
the threads of this process do not matter; a crash of lief on a hostile file becomes a one-line
error instead of killing the conversion.

Protocol (both ways): an 8-byte big-endian length, then a pickle. Requests are
``(function name, args)`` for a function in ``FUNCTIONS``; replies ``(True, result)`` or
``(False, exception)``. Both ends are this module, so pickle is safe here.
"""

from __future__ import annotations

import atexit
import os
import pickle
import struct
import subprocess
import sys
from typing import BinaryIO

from sconify.errors import ImageError

_LENGTH = struct.Struct(">Q")


class ElfWorker:
    def __init__(self) -> None:
        # The child gets this process's module path, so it imports this very sconify.
        code = f"import sys; sys.path[:0] = {sys.path!r}; from sconify.conversion.elfworker import serve; serve()"
        self._process = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._proc_readable: bool | None = None  # whether the helper can open /proc/OUR_PID/fd/N

    def __enter__(self) -> ElfWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        # The helper holds no state worth a clean exit, and tearing lief down takes ~0.2 s.
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        for stream in (self._process.stdin, self._process.stdout):
            if stream is not None and not stream.closed:
                try:
                    stream.close()
                except OSError:
                    pass

    def _call(self, what: str, name: str, *args):
        try:
            _send(self._process.stdin, (name, args))  # type: ignore[arg-type]
            ok, value = _receive(self._process.stdout)  # type: ignore[arg-type]
        except (OSError, EOFError, pickle.UnpicklingError):
            raise ImageError(f"the ELF parser (lief) crashed on {what}; the file is corrupt or hostile") from None
        if not ok:
            raise value
        return value

    def dynamic_dependencies(self, data: bytes, what: str = "an ELF file"):
        """``sconify.conversion.libraries.dynamic_dependencies`` in the helper."""
        return self._call(what, "dynamic_dependencies", data)

    def dynamic_dependencies_at(self, fd: int, offset: int, size: int, what: str = "an ELF file"):
        """The same for ``size`` bytes at ``offset`` of our open file ``fd``: the helper reads
        them itself through /proc (no copy through the pipe), or is sent them where it cannot."""
        if self._proc_readable is not False:
            try:
                info = self._call(what, "dynamic_dependencies_in", f"/proc/{os.getpid()}/fd/{fd}", offset, size)
                self._proc_readable = True
                return info
            except OSError:
                self._proc_readable = False  # e.g. no /proc, or a hardened one: send bytes
        return self.dynamic_dependencies(os.pread(fd, size, offset), what)

    def validate(self, path: str, name: str) -> None:
        """``embedfs.elf.validate_with_lief`` in the helper (NotELFError if lief refuses it)."""
        self._call(name, "validate", os.fspath(path), name)


_prestarted: ElfWorker | None = None


def prestart() -> None:
    """Start a helper now, for the conversion to take with ``take_prestarted``: the
    ``sconify-image`` entry point calls this before its own imports, so lief loads meanwhile.
    A helper nobody took is stopped at exit."""
    global _prestarted
    if _prestarted is None:
        _prestarted = ElfWorker()
        atexit.register(_prestarted.close)


def take_prestarted() -> ElfWorker | None:
    global _prestarted
    worker, _prestarted = _prestarted, None
    return worker


def _send(stream: BinaryIO, value: object) -> None:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(data)) + data)
    stream.flush()


def _receive(stream: BinaryIO) -> object:
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        raise EOFError("the helper process ended")
    (length,) = _LENGTH.unpack(head)
    data = stream.read(length)
    if len(data) < length:
        raise EOFError("the helper process ended")
    return pickle.loads(data)


def serve() -> None:
    """The child: import lief, then answer requests until stdin closes."""
    import lief

    from embedfs.elf import validate_with_lief
    from sconify.conversion.libraries import dynamic_dependencies, dynamic_dependencies_in

    lief.logging.disable()
    functions = {"dynamic_dependencies": dynamic_dependencies, "dynamic_dependencies_in": dynamic_dependencies_in,
                 "validate": validate_with_lief}
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            name, args = _receive(requests)
        except EOFError:
            return
        try:
            reply = (True, functions[name](*args))
        except Exception as exc:  # noqa: BLE001 - raised again in the parent
            reply = (False, exc)
        _send(replies, reply)
