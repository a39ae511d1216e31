"""The embedfs archive: deterministic, hashed, compressed, readable one file at a time."""

from __future__ import annotations

import io
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embedfs.archive import CHUNK_SIZE, INDEX_RECORD, TRAILER, Archive, ArchiveEntry, pack, pack_directory
from embedfs.errors import FormatError, InputError, IntegrityError


def file_entry(path: str, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0) -> ArchiveEntry:
    return ArchiveEntry(path, "file", mode, uid, gid, len(data), source=data)


def packed(entries: list[ArchiveEntry], level: int = 3) -> bytes:
    out = io.BytesIO()
    pack(entries, out, level=level)
    return out.getvalue()


SAMPLE = [
    file_entry("app/main.py", b"print('hello')\n" * 100),
    file_entry("app/data/blob.bin", os.urandom(CHUNK_SIZE * 2 + 123), mode=0o600, uid=1000, gid=1000),
    file_entry("app/empty", b""),
    ArchiveEntry("app/link", "symlink", 0o777, 0, 0, 0, linkname="main.py"),
]


def test_every_member_reads_back_with_its_metadata() -> None:
    archive = Archive.open(packed(SAMPLE))
    assert [m.path for m in archive.list()] == sorted(e.path for e in SAMPLE)
    for entry in SAMPLE:
        member = archive.stat(entry.path)
        assert (member.kind, member.mode, member.uid, member.gid) == (entry.kind, entry.mode, entry.uid, entry.gid)
        if entry.kind == "file":
            assert archive.read(entry.path) == entry.source
            assert member.size == entry.size
        else:
            assert member.linkname == "main.py"
    assert archive.verify().file_count == len(SAMPLE)


def test_output_is_byte_identical_whatever_the_input_order() -> None:
    assert packed(SAMPLE) == packed(list(reversed(SAMPLE)))


def test_root_hash_names_the_content_not_the_compression() -> None:
    assert Archive.open(packed(SAMPLE, level=1)).root_hash == Archive.open(packed(SAMPLE, level=19)).root_hash


def test_root_hash_covers_metadata() -> None:
    changed = [file_entry("app/main.py", SAMPLE[0].source, mode=0o755), *SAMPLE[1:]]
    assert Archive.open(packed(SAMPLE)).root_hash != Archive.open(packed(changed)).root_hash


@settings(max_examples=25, deadline=None)
@given(content=st.binary(min_size=1, max_size=2000), position=st.integers(min_value=0), delta=st.integers(1, 255))
def test_changing_any_byte_of_any_file_changes_the_root_hash(content: bytes, position: int, delta: int) -> None:
    position %= len(content)
    tampered = bytearray(content)
    tampered[position] = (tampered[position] + delta) % 256
    original = Archive.open(packed([file_entry("a", content), file_entry("b", b"x")])).root_hash
    assert Archive.open(packed([file_entry("a", bytes(tampered)), file_entry("b", b"x")])).root_hash != original


def test_a_flipped_content_byte_is_caught_and_named() -> None:
    data = bytearray(packed(SAMPLE))
    member = Archive.open(bytes(data)).stat("app/data/blob.bin")
    data[member.data_offset + member.data_length // 2] ^= 0xFF
    archive = Archive.open(bytes(data))
    assert archive.read("app/main.py")  # other files stay readable: each is compressed on its own
    with pytest.raises(IntegrityError) as caught:
        archive.verify()
    assert caught.value.path == "app/data/blob.bin"
    assert "app/data/blob.bin" in str(caught.value)


def test_a_changed_index_record_fails_the_root_hash() -> None:
    data = bytearray(packed(SAMPLE))
    _magic, index_offset, _size, _count, _root = TRAILER.unpack_from(data, len(data) - TRAILER.size)
    mode_at = index_offset + struct.calcsize("<BHH")  # mode of the first record
    data[mode_at] ^= 0o1
    with pytest.raises(IntegrityError) as caught:
        Archive.open(bytes(data))
    assert caught.value.check == "root hash"


@pytest.mark.parametrize("damage", ["truncate", "magic", "version", "trailer"])
def test_damaged_archives_are_refused_with_a_format_error(damage: str) -> None:
    data = bytearray(packed(SAMPLE))
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "magic":
        data[0:8] = b"NOTEMBED"
    elif damage == "version":
        data[8] = 99
    else:
        data[-TRAILER.size] ^= 0xFF
    with pytest.raises(FormatError):
        Archive.open(bytes(data))


@pytest.mark.parametrize("path", ["/abs", "../up", "a/../b", "a//b", "./a", "a/.", ""])
def test_unclean_member_paths_are_refused(path: str) -> None:
    with pytest.raises(InputError):
        packed([file_entry(path, b"x")])


def test_duplicate_paths_are_refused() -> None:
    with pytest.raises(InputError, match="twice"):
        packed([file_entry("a", b"1"), file_entry("a", b"2")])


def test_a_source_shorter_than_its_size_is_refused() -> None:
    entry = ArchiveEntry("short", "file", 0o644, 0, 0, 10, source=lambda: io.BytesIO(b"12345"))
    with pytest.raises(InputError, match="early"):
        packed([entry])


def test_callable_sources_may_be_readers_at_an_offset_of_a_larger_spool(tmp_path) -> None:
    spool = tmp_path / "spool"
    spool.write_bytes(b"AAAAbbbbbbCC")

    def reader_at(offset: int):
        def open_it():
            handle = open(spool, "rb")
            handle.seek(offset)
            return handle
        return open_it

    archive = Archive.open(packed([ArchiveEntry("b", "file", 0o644, 0, 0, 6, source=reader_at(4))]))
    assert archive.read("b") == b"bbbbbb"


def test_open_accepts_a_path_a_file_object_bytes_and_a_memoryview(tmp_path) -> None:
    data = packed(SAMPLE)
    path = tmp_path / "a.efs"
    path.write_bytes(data)
    roots = set()
    with open(path, "rb") as handle:
        for source in (path, str(path), handle, data, memoryview(data), io.BytesIO(data)):
            roots.add(Archive.open(source).root_hash)
    assert len(roots) == 1


def test_pack_directory_records_files_and_symlinks_and_refuses_fifos(tmp_path) -> None:
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "mod.py").write_text("x = 1\n")
    (src / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(src / "run.sh", 0o755)
    os.symlink("pkg/mod.py", src / "alias.py")
    out = io.BytesIO()
    result = pack_directory(src, out)
    archive = Archive.open(out.getvalue())
    assert [m.path for m in archive.list()] == ["alias.py", "pkg/mod.py", "run.sh"]
    assert archive.stat("run.sh").mode == 0o755
    assert archive.stat("alias.py").linkname == "pkg/mod.py"
    assert result.root_hash == archive.root_hash
    os.mkfifo(src / "pipe")
    with pytest.raises(InputError, match="pipe"):
        pack_directory(src, io.BytesIO())


def test_extract_writes_every_member(tmp_path) -> None:
    archive = Archive.open(packed(SAMPLE))
    assert archive.extract(tmp_path / "out") == len(SAMPLE)
    assert (tmp_path / "out" / "app" / "main.py").read_bytes() == SAMPLE[0].source
    assert os.readlink(tmp_path / "out" / "app" / "link") == "main.py"


def test_index_records_have_the_documented_size() -> None:
    assert INDEX_RECORD.size == 73 and TRAILER.size == 64


def mixed_entries() -> list[ArchiveEntry]:
    """Many small files, empty files and symlinks around files of one chunk and of several."""
    entries = [file_entry(f"src/m{i:04d}.py", b"x = %d\n" % i * (i % 97)) for i in range(600)]
    entries += [ArchiveEntry(f"src/l{i}", "symlink", 0o777, 0, 0, 0, linkname=f"m{i:04d}.py") for i in range(0, 600, 50)]
    for size in (CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE + 5):
        entries.append(file_entry(f"src/m0300-{size}.bin", bytes(range(256)) * (size // 256) + b"z" * (size % 256)))
    return entries


def test_the_bytes_do_not_depend_on_batching_or_look_ahead(monkeypatch) -> None:
    """Small files are packed in runs on worker threads and written through a bounded look-ahead;
    none of that may show in the output."""
    import embedfs.archive as archive_module

    reference = packed(mixed_entries())
    for name, value in (("BATCH_BYTES", 1), ("BATCH_MEMBERS", 1), ("PENDING_BYTES", 0), ("PENDING_SLOTS", 1)):
        monkeypatch.setattr(archive_module, name, value)
    assert packed(mixed_entries()) == reference
    archive = Archive.open(reference)
    for entry in mixed_entries():
        if entry.kind == "file":
            assert archive.read(entry.path) == entry.source


def test_a_large_file_is_streamed_not_read_whole() -> None:
    """Output starts before the source of a large file has been read to its end: at most the
    look-ahead (a few chunks) is held."""
    size = 48 * CHUNK_SIZE
    delivered = 0

    class Counting(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:
            nonlocal delivered
            n = min(len(buffer), size - delivered)
            buffer[:n] = bytes(n)
            delivered += n
            return n

    read_at_first_data_write = []

    class Out(io.BytesIO):
        def write(self, data) -> int:
            if self.tell() > 0 and not read_at_first_data_write:  # the header comes first
                read_at_first_data_write.append(delivered)
            return super().write(data)

    out = Out()
    pack([ArchiveEntry("big", "file", 0o644, 0, 0, size, source=Counting)], out)
    assert read_at_first_data_write[0] <= 12 * CHUNK_SIZE
    assert Archive.open(out.getvalue()).read("big") == bytes(size)


class CountingReads:
    """An archive's bytes, recording the length of every read verify makes."""

    def __init__(self, data: bytes):
        self.data = data
        self.reads: list[int] = []

    def archive(self) -> Archive:
        from embedfs.archive import ByteSource

        def read_at(at: int, n: int) -> bytes:
            self.reads.append(n)
            return self.data[at:at + n]

        return Archive(ByteSource(read_at, len(self.data)))


def test_verify_reads_small_files_in_runs_and_names_a_corrupted_one() -> None:
    """Small files are checked in runs, one read per run; one changed byte in one of them is
    still named, and of two damaged files the first in path order is, as ``read`` would."""
    entries = [file_entry(f"src/m{i:04d}.py", f"# module {i}\n".encode() * (i % 40 + 1)) for i in range(900)]
    data = bytearray(packed(entries))
    reference = Archive.open(bytes(data))
    counting = CountingReads(bytes(data))
    assert counting.archive().verify().file_count == 900
    assert len(counting.reads) < 900 // 50  # index, header, trailer, and a few runs

    for name in ("src/m0417.py", "src/m0655.py"):
        member = reference.stat(name)
        data[member.data_offset + member.data_length // 2] ^= 0x01
    tampered = Archive.open(bytes(data))
    with pytest.raises(IntegrityError) as caught:
        tampered.verify()
    assert caught.value.path == "src/m0417.py"
    with pytest.raises(IntegrityError) as alone:
        tampered.read("src/m0417.py")
    assert str(caught.value) == str(alone.value) and caught.value.check == alone.value.check
    assert tampered.read("src/m0416.py") == entries[416].source


def test_verify_streams_a_large_file() -> None:
    """A file of many chunks is decompressed and hashed a piece at a time, not held whole."""
    import tracemalloc

    size = 64 * CHUNK_SIZE
    counting = CountingReads(packed([file_entry("big", bytes(size)), file_entry("small", b"x")]))
    archive = counting.archive()
    tracemalloc.start()
    try:
        result = archive.verify()
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.content_bytes == size + 1
    assert peak < 8 * CHUNK_SIZE
    assert max(counting.reads) <= CHUNK_SIZE
