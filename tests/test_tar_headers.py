"""BoundedTarInfo.frombuf decodes plain headers itself (speed); it must give tarfile's result for
every header, plain or not: the same fields, or the same error."""

from __future__ import annotations

import tarfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sconify.image.tarbounds import BoundedTarInfo

FIELDS = ("name", "mode", "uid", "gid", "size", "mtime", "chksum", "type", "linkname", "uname", "gname",
          "devmajor", "devminor")
NUMBER_FIELDS = ((100, 8), (108, 8), (116, 8), (124, 12), (136, 12), (148, 8), (329, 8), (337, 8))


def decoded(cls, buf: bytes):
    """The fields ``cls.frombuf`` decodes, or the error it raises (type and text)."""
    try:
        info = cls.frombuf(buf, "utf-8", "surrogateescape")
    except Exception as exc:  # noqa: BLE001 - compared, not handled
        return type(exc).__name__, str(exc)
    return {field: getattr(info, field) for field in FIELDS} | {
        "sparse": getattr(info, "_sparse_structs", None), "class": type(info) is cls}


def same_as_tarfile(buf: bytes) -> None:
    assert decoded(BoundedTarInfo, buf) == decoded(tarfile.TarInfo, buf)


def with_checksum(buf: bytes, signed: bool = False) -> bytes:
    """``buf`` with a correct checksum field (signed: summed as signed chars, as Sun tar did)."""
    blanked = buf[:148] + b" " * 8 + buf[156:]
    total = sum(b - 256 if signed and b > 127 else b for b in blanked)
    return buf[:148] + b"%06o\0 " % (total & 0o777777) + buf[156:]


names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), min_size=1, max_size=120)
types = st.sampled_from([tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
                         tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE, tarfile.CONTTYPE])


@st.composite
def headers(draw) -> bytes:
    info = tarfile.TarInfo(draw(names))
    info.type = draw(types)
    info.size = draw(st.integers(0, 1 << 40)) if info.type in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
    info.mode = draw(st.integers(0, 0o7777))
    info.uid, info.gid = draw(st.integers(0, 1 << 24)), draw(st.integers(0, 1 << 24))
    info.mtime = draw(st.integers(0, 1 << 34))
    info.linkname = draw(names) if info.type in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
    info.uname, info.gname = draw(st.sampled_from(["", "root", "app"])), draw(st.sampled_from(["", "root", "ü"]))
    info.devmajor, info.devminor = draw(st.integers(0, 255)), draw(st.integers(0, 255))
    fmt = draw(st.sampled_from([tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT, tarfile.PAX_FORMAT]))
    try:
        return info.tobuf(fmt, "utf-8", "surrogateescape")[-512:]  # the member's own header block
    except ValueError:  # not representable in this format (e.g. a long name in ustar)
        return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")[-512:]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(headers())
def test_written_headers_decode_as_tarfile_does(buf):
    same_as_tarfile(buf)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(headers(), st.sampled_from(NUMBER_FIELDS), st.binary(min_size=1, max_size=12),
       st.sampled_from(["unsigned", "signed", "stale"]))
def test_odd_number_fields_decode_as_tarfile_does(buf, field, value, checksum):
    """Blank, space-padded, signed, base-256, non-octal and non-ASCII number fields; with the
    checksum recomputed (unsigned or signed) or left stale."""
    offset, width = field
    value = (value * width)[:width]
    buf = buf[:offset] + value + buf[offset + width:]
    if checksum != "stale" and field != (148, 8):
        buf = with_checksum(buf, signed=checksum == "signed")
    same_as_tarfile(buf)


@pytest.mark.parametrize("buf", [
    b"", b"\0" * 100, b"\0" * 512, b"x" * 512,
    with_checksum(b"a" * 100 + b"\0" * 56 + b"S" + b"\0" * 355),  # old GNU sparse
    with_checksum(b"dir/" + b"\0" * 152 + b"\0" + b"\0" * 355),  # V7 directory: AREGTYPE with a slash
    with_checksum(b"f" + b"\0" * 99 + b"  644 \0 " + b"\0" * 48 + b"0" + b"\0" * 355),  # space padding
])
def test_special_blocks_decode_as_tarfile_does(buf):
    same_as_tarfile(buf)


def test_a_plain_header_takes_the_fast_path(monkeypatch):
    """The point of the override: tarfile's decoder is not called for a plain header."""
    buf = tarfile.TarInfo("app/main.py").tobuf(tarfile.GNU_FORMAT)

    def refuse(*args):
        raise AssertionError("tarfile's frombuf was called")

    monkeypatch.setattr(tarfile.TarInfo, "frombuf", classmethod(refuse))
    assert BoundedTarInfo.frombuf(buf, "utf-8", "surrogateescape").name == "app/main.py"
