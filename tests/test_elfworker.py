"""ElfWorker: lief in a helper process gives what lief in this process gives, and a dead
helper becomes a one-line ImageError."""

import sys
from pathlib import Path

import pytest

from embedfs.errors import NotELFError
from sconify.conversion.elfworker import ElfWorker
from sconify.errors import ImageError
from sconify.conversion.libraries import dynamic_dependencies


def test_answers_like_lief_in_process(tmp_path):
    data = Path(sys.executable).resolve().read_bytes()
    with ElfWorker() as worker:
        assert worker.dynamic_dependencies(data) == dynamic_dependencies(data)
        assert worker.dynamic_dependencies(b"not an ELF file") == dynamic_dependencies(b"not an ELF file")
        worker.validate(str(Path(sys.executable).resolve()), "python")
        junk = tmp_path / "junk"
        junk.write_bytes(b"#!/bin/sh\necho not an ELF file\n")
        with pytest.raises(NotELFError, match="junk is not an ELF file lief can parse"):
            worker.validate(str(junk), "junk")


def test_a_helper_that_died_is_one_line():
    with ElfWorker() as worker:
        worker._process.kill()
        worker._process.wait()
        with pytest.raises(ImageError, match="the ELF parser \\(lief\\) crashed on /usr/lib/x.so"):
            worker.dynamic_dependencies(b"\x7fELF", "/usr/lib/x.so")


def test_reads_a_range_of_our_open_file_itself_or_is_sent_it(tmp_path):
    data = Path(sys.executable).resolve().read_bytes()
    holder = tmp_path / "spool"
    holder.write_bytes(b"x" * 1000 + data + b"y" * 10)
    with ElfWorker() as worker, holder.open("rb") as handle:
        expected = dynamic_dependencies(data)
        assert worker.dynamic_dependencies_at(handle.fileno(), 1000, len(data)) == expected
        assert worker._proc_readable is True  # read through /proc/PID/fd, nothing sent
        worker._proc_readable = False  # as where /proc cannot be read: the bytes are sent
        assert worker.dynamic_dependencies_at(handle.fileno(), 1000, len(data)) == expected
