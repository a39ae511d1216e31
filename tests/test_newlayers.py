"""LayerTar writes the layers sconify adds: byte for byte what tarfile writes for the same entries."""

from __future__ import annotations

import io
import tarfile

import pytest

from sconify.conversion.newlayers import LayerTar, TarEntry, whiteout_for, write_layer_tar

NAMES = [
    "a", "usr/lib/python3.11/json/decoder.py", "app/synth/pkg1/module_77.py",
    "x" * 95, "x" * 96, "x" * 150, "d/" * 60 + "f.py", "usr/lib/n\u00e9.py", "usr/lib/bad\udcff.py",
]


def tarfile_bytes(entries: list[TarEntry]) -> bytes:
    """The same tar written by tarfile alone (the reference)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(entries, key=lambda e: e.path):
            info = tarfile.TarInfo(entry.path)
            info.uid, info.gid, info.uname, info.gname = entry.uid, entry.gid, "", ""
            if entry.kind == "whiteout":
                info.type, info.mode, info.mtime = tarfile.REGTYPE, 0o644, 0
                tar.addfile(info)
            else:
                info.type, info.mode, info.mtime, info.size = tarfile.REGTYPE, entry.mode, entry.mtime, entry.size
                content = io.BytesIO()
                entry.write(content)
                tar.addfile(info, io.BytesIO(content.getvalue()))
    return out.getvalue()


@pytest.mark.parametrize("name", NAMES)
def test_whiteouts_are_the_headers_tarfile_writes(name):
    """Short ASCII whiteouts take a fast path (a patched template); long, non-ASCII and
    non-UTF-8 names go through tarfile: either way the bytes are tarfile's."""
    entries = [whiteout_for(name), TarEntry("usr/bin/x", "file", 0o755, size=3, mtime=5, write=lambda sink: sink.write(b"abc"))]
    out = io.BytesIO()
    write_layer_tar(entries, out)
    assert out.getvalue() == tarfile_bytes(entries)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        assert whiteout_for(name).path in tar.getnames()


def test_a_file_whose_writer_gives_the_wrong_size_is_refused():
    tar = LayerTar(io.BytesIO())
    with pytest.raises(ValueError, match="2 bytes written, 3 declared"):
        tar.add(TarEntry("f", "file", size=3, write=lambda sink: sink.write(b"ab")))
