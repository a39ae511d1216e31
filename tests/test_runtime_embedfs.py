"""The C reader of embedfs archives (runtime/src/embedfs.c) against the Python reference.

An archive packed by ``embedfs.archive.pack`` is injected into a copy of the C test driver
(runtime/tests/embedfs_tool.c) itself, so that the driver reads it both from the file
(``embedfs_find_in_file``) and from its own memory (``embedfs_find_self``, ELF = ``self``), as
the shield does in every container. Every path must list, stat and read as Python's
``Archive`` says; corrupt data, a corrupt index and a truncated archive must be refused.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import runtime_tool

from embedfs.archive import INDEX_RECORD, TRAILER, Archive, ArchiveEntry, directory_entries, pack
from embedfs.elf import NOTE_HEADER, NOTE_NAME, find_embedded, inject
from embedfs.errors import IntegrityError

REPO = Path(__file__).resolve().parent.parent
RUNTIME = REPO / "runtime"
TOOL = RUNTIME / "build" / "tools" / "embedfs_tool"
DEPS = RUNTIME / "build" / "deps" / "usr"
BIG = 2 * (1 << 20) + 12345  # three zstd frames of at most 1 MiB


@pytest.fixture(scope="module")
def tool() -> Path:
    return runtime_tool("embedfs_tool")


@pytest.fixture(scope="module")
def static_tool(tool: Path, tmp_path_factory) -> Path:
    """The same driver linked -static: no PT_PHDR, so embedfs_find_self must find the load bias
    from the injector's layout (as embedfs/runtime.py does)."""
    out = tmp_path_factory.mktemp("static") / "embedfs_tool-static"
    lib = DEPS / "lib" / "x86_64-linux-gnu"
    command = ["gcc", "-static", "-O2", "-std=gnu11", "-D_GNU_SOURCE", f"-I{DEPS}/include",
               f"-I{DEPS}/include/x86_64-linux-gnu", f"-I{RUNTIME}/src",
               str(RUNTIME / "tests/embedfs_tool.c"), str(RUNTIME / "src/embedfs.c"), str(RUNTIME / "src/util.c"),
               str(lib / "libcrypto.a"), str(lib / "libzstd.a"), "-lpthread", "-o", str(out)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"static link of embedfs_tool failed: {run.stderr[-3000:]}"
    assert b"PHDR" not in subprocess.run(["readelf", "-lW", str(out)], capture_output=True, check=True).stdout
    return out


def make_tree(root: Path) -> Path:
    """Nested directories, symlinks (to a file, a directory, outside), an empty file, a file of
    several frames, modes, UTF-8 names and names that sort around '/' ('-' and '.' are below it)."""
    files = {
        "a/b/c.txt": b"hello from a/b/c\n" * 40,
        "a/b/d/e.txt": b"deep\n",
        "a/b.c": b"b dot c\n",
        "a/b-c/x": b"x\n",
        "a-b": b"a dash b\n",
        "a.b/x": b"a dot b\n",
        "a0": b"a zero\n",
        "lib/python3/os.py": b"import sys\n" * 100,
        "lib/python3.11/site.py": b"# site\n",
        "lib/python3-config": b"#!/bin/sh\n",
        "lib/python3 2": b"space\n",
        "d1/d2/d3/d4/f": b"four levels\n",
        "empty": b"",
        "sp ace.txt": b"with a space\n",
        "\u00fcn\u00efc\u00f6de/\u00e7.txt": "unicode \u00e7\n".encode(),
        "z": b"last\n",
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "big.bin").write_bytes(os.urandom(BIG))
    (root / "a/b/run.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(root / "a/b/run.sh", 0o755)
    os.chmod(root / "a0", 0o600)
    os.symlink("b/c.txt", root / "a/link")
    os.symlink("a/b", root / "dirlink")
    os.symlink("/etc/passwd", root / "lib/abs")
    return root


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("embedfs-c")
    tree = make_tree(base / "tree")
    path = base / "app.efs"
    with open(path, "wb") as out:
        pack(directory_entries(tree), out)
    return path


@pytest.fixture(scope="module")
def injected(tool: Path, archive: Path, tmp_path_factory) -> Path:
    """A copy of the driver with the archive injected."""
    out = tmp_path_factory.mktemp("injected") / "embedfs_tool"
    inject(tool, archive, out)
    return out


@pytest.fixture(scope="module")
def injected_static(static_tool: Path, archive: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("injected-static") / "embedfs_tool"
    inject(static_tool, archive, out)
    return out


def run(binary: Path, elf: str | Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), str(elf), *args], capture_output=True, timeout=60)


def ok(binary: Path, elf: str | Path, *args: str) -> bytes:
    result = run(binary, elf, *args)
    assert result.returncode == 0, f"{args}: exit {result.returncode}: {result.stderr.decode(errors='replace')}"
    assert result.stderr == b""
    return result.stdout


def directories(arc: Archive) -> list[str]:
    """Every directory implied by the member paths, "" (the root) first."""
    found = {""}
    for member in arc.list():
        parts = member.path.split("/")
        found.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return sorted(found)


def expected_listing(arc: Archive, directory: str) -> str:
    """What `ls` prints: each direct child once, sorted by its name's bytes."""
    prefix = f"{directory}/" if directory else ""
    children: dict[str, object] = {}
    for member in arc.list():
        if member.path.startswith(prefix):
            name, sep, _ = member.path[len(prefix):].partition("/")
            children[name] = "d" if sep else member
    lines = []
    for name in sorted(children, key=lambda n: n.encode("utf-8", "surrogateescape")):
        child = children[name]
        if child == "d":
            lines.append(f"d {name}")
        elif child.kind == "symlink":
            lines.append(f"l {name} -> {child.linkname}")
        else:
            lines.append(f"f {name}")
    return "".join(line + "\n" for line in lines)


def expected_stat(arc: Archive, path: str) -> str:
    m = arc.stat(path)
    return f"{m.kind} {m.mode:o} {m.size} {m.sha256}\n"


@pytest.fixture(params=["file", "self", "static-self"])
def reader(request, tool: Path, injected: Path) -> tuple[Path, str | Path]:
    """(binary to run, its ELF argument): the plain driver reading the injected file, or the
    injected driver (dynamic PIE, or static without PT_PHDR) reading its own memory."""
    if request.param == "file":
        return tool, injected
    if request.param == "self":
        return injected, "self"
    return request.getfixturevalue("injected_static"), "self"


def test_the_c_reader_agrees_with_python_on_every_path(reader, archive: Path) -> None:
    binary, elf = reader
    with Archive.open(archive) as arc:
        members = arc.list()
        assert ok(binary, elf, "root").decode() == f"{arc.root_hash} {len(members)}\n"
        for directory in directories(arc):
            assert ok(binary, elf, "ls", directory).decode() == expected_listing(arc, directory), directory
            if directory:
                assert ok(binary, elf, "stat", directory) == b"dir\n"
        for member in members:
            assert ok(binary, elf, "stat", member.path).decode() == expected_stat(arc, member.path), member.path
            assert ok(binary, elf, "cat", member.path) == arc.read(member.path), member.path
        assert ok(binary, elf, "ls", "/") == ok(binary, elf, "ls", "")
        # the tricky orders, spelled out: '-' < '.' < '/' < '0' in bytes, names sort without the '/'
        assert ok(binary, elf, "ls", "").decode().splitlines()[:5] == ["d a", "f a-b", "d a.b", "f a0", "f big.bin"]
        assert ok(binary, elf, "ls", "lib").decode().splitlines() == [
            "l abs -> /etc/passwd", "d python3", "f python3 2", "f python3-config", "d python3.11"]
        assert ok(binary, elf, "ls", "a/b").decode().splitlines() == ["f c.txt", "d d", "f run.sh"]


def test_missing_paths_exit_1_and_wrong_kinds_exit_2(tool: Path, injected: Path) -> None:
    for args in (("stat", "nope"), ("cat", "a/b/nope"), ("ls", "a/nope"), ("stat", "a/b."), ("stat", "lib/python")):
        result = run(tool, injected, *args)
        assert result.returncode == 1, args
        assert result.stderr.startswith(b"embedfs_tool: ") and b"no such file" in result.stderr
    for args in (("ls", "a-b"), ("cat", "a/b")):
        result = run(tool, injected, *args)
        assert result.returncode == 2 and result.stderr.startswith(b"embedfs_tool: "), args


def test_an_executable_without_an_archive(tool: Path) -> None:
    for elf in ("self", str(tool)):
        result = run(tool, elf, "root")
        assert result.returncode == 2
        assert b"carries no embedfs archive" in result.stderr


def patched(src: Path, dst: Path, changes: dict[int, bytes]) -> Path:
    data = bytearray(src.read_bytes())
    for at, value in changes.items():
        data[at:at + len(value)] = value
    dst.write_bytes(bytes(data))
    os.chmod(dst, 0o755)
    return dst


def flipped(data: bytes, at: int) -> dict[int, bytes]:
    return {at: bytes([data[at] ^ 0x5A])}


@pytest.mark.parametrize("path, where", [("big.bin", "middle"), ("a/b/c.txt", "frame header")])
def test_corrupt_file_data_is_refused_naming_the_path(path, where, tool: Path, injected: Path, tmp_path) -> None:
    descriptor = find_embedded(injected)
    data = injected.read_bytes()
    with Archive.open(injected, offset=descriptor.archive_offset, size=descriptor.archive_size) as arc:
        member = arc.stat(path)
    at = descriptor.archive_offset + member.data_offset + (member.data_length // 2 if where == "middle" else 0)
    bad = patched(injected, tmp_path / "bad", flipped(data, at))
    with Archive.open(bad, offset=descriptor.archive_offset, size=descriptor.archive_size) as arc:
        with pytest.raises(IntegrityError) as python_error:
            arc.read(path)
        assert python_error.value.path == path
        assert ok(tool, bad, "cat", "a0") == arc.read("a0")  # other files still read
    for binary, elf in ((tool, bad), (bad, "self")):
        result = run(binary, elf, "cat", path)
        assert result.returncode == 2
        message = result.stderr.decode()
        assert message.startswith(f"embedfs_tool: {path}: "), message
        assert any(check in message for check in ("file sha256", "zstd frame", "file size")), message
        if where == "middle":  # random content is stored raw: the hash is what notices
            assert "file sha256" in message and python_error.value.check == "file sha256"
        else:
            assert "zstd frame" in message and python_error.value.check == "zstd frame"


def index_record_offsets(archive_bytes: bytes) -> list[int]:
    """Where each index record starts, from the archive start."""
    _magic, index_offset, _size, count, _root = TRAILER.unpack_from(archive_bytes, len(archive_bytes) - TRAILER.size)
    offsets, pos = [], index_offset
    for _ in range(count):
        offsets.append(pos)
        _kind, path_len, link_len, *_ = INDEX_RECORD.unpack_from(archive_bytes, pos)
        pos += INDEX_RECORD.size + path_len + link_len
    return offsets


@pytest.mark.parametrize("field_offset", [5, 9, 17, 41 + 7])  # mode, uid, size, sha256
def test_a_corrupt_index_byte_is_a_root_hash_error(field_offset, tool: Path, injected: Path, archive: Path, tmp_path) -> None:
    descriptor = find_embedded(injected)
    record = index_record_offsets(archive.read_bytes())[3]
    at = descriptor.archive_offset + record + field_offset
    data = injected.read_bytes()
    change = {at: bytes([data[at] ^ 0x01])}  # the low bit: the mode stays a valid mode
    bad = patched(injected, tmp_path / "bad", change)
    for binary, elf in ((tool, bad), (bad, "self")):
        result = run(binary, elf, "root")
        assert result.returncode == 2
        assert b"root hash" in result.stderr and result.stderr.startswith(b"embedfs_tool: ")


def descriptor_at(injected: Path) -> int:
    """File offset of the 88-byte descriptor: the note right after the archive, 8-aligned."""
    d = find_embedded(injected)
    note = (d.archive_offset + d.archive_size + 7) // 8 * 8
    data = injected.read_bytes()
    assert data[note + NOTE_HEADER.size:note + NOTE_HEADER.size + len(NOTE_NAME)] == NOTE_NAME
    return note + NOTE_HEADER.size + len(NOTE_NAME)


def test_a_root_hash_other_than_the_descriptors_is_refused(tool: Path, injected: Path, tmp_path) -> None:
    desc = descriptor_at(injected)
    bad = patched(injected, tmp_path / "bad", flipped(injected.read_bytes(), desc + 56))
    for binary, elf in ((tool, bad), (bad, "self")):
        result = run(binary, elf, "root")
        assert result.returncode == 2 and b"differs from its descriptor" in result.stderr


def test_a_truncated_archive_is_refused(tool: Path, injected: Path, tmp_path) -> None:
    d = find_embedded(injected)
    desc = descriptor_at(injected)
    # the descriptor says the archive is shorter: its trailer is not where it should be
    for cut in (1, 64, d.archive_size // 2):
        bad = patched(injected, tmp_path / f"short-{cut}", {desc + 24: struct.pack("<Q", d.archive_size - cut)})
        for binary, elf in ((tool, bad), (bad, "self")):
            result = run(binary, elf, "root")
            assert result.returncode == 2, (cut, elf)
            assert b"trailer" in result.stderr or b"truncated" in result.stderr or b"outside" in result.stderr
    # the file itself cut inside the archive
    cut_file = tmp_path / "cut"
    cut_file.write_bytes(injected.read_bytes()[:d.archive_offset + d.archive_size // 2])
    result = run(tool, cut_file, "root")
    assert result.returncode == 2 and result.stderr.startswith(b"embedfs_tool: ")
    # the descriptor claims more than the file holds
    bad = patched(injected, tmp_path / "long", {desc + 24: struct.pack("<Q", d.archive_size + (1 << 30))})
    for binary, elf in ((tool, bad), (bad, "self")):
        result = run(binary, elf, "root")
        assert result.returncode == 2 and (b"truncated" in result.stderr or b"outside the loaded" in result.stderr)


def test_opening_thousands_of_members_is_fast(tool: Path, tmp_path) -> None:
    entries = [ArchiveEntry(f"usr/lib/pkg{i // 100:03d}/mod{i % 100:02d}.py", "file", 0o644, 0, 0, 30,
                            source=f"# module {i:05d} of the package\n".encode()[:30].ljust(30)) for i in range(5000)]
    path = tmp_path / "many.efs"
    with open(path, "wb") as out:
        pack(entries, out)
    binary = tmp_path / "many"
    inject(tool, path, binary)
    line = ok(binary, "self", "time-open", "20").decode()
    micros = float(line.split()[1])
    assert "(5000 members" in line
    assert micros < 50_000, line  # about 1 ms here; generous for a loaded CI machine
    assert ok(binary, "self", "ls", "usr/lib").decode().splitlines()[:2] == ["d pkg000", "d pkg001"]
    assert ok(binary, "self", "cat", "usr/lib/pkg049/mod99.py") == entries[4999].source


# --- encrypted members (version 2) ------------------------------------------------------------


CODE_KEY = bytes(range(100, 132))


@pytest.fixture(scope="module")
def injected_encrypted(tool: Path, tmp_path_factory) -> tuple[Path, Path]:
    """A copy of the driver with a version-2 archive: the tree with app/ encrypted (a file of
    several frames and an empty file among them), and the archive alone."""
    base = tmp_path_factory.mktemp("embedfs-c-encrypted")
    tree = make_tree(base / "tree")
    (tree / "app").mkdir()
    (tree / "app/secret.py").write_bytes(b"SECRET = 'the-distinctive-secret'\n" * 30)
    (tree / "app/empty.py").write_bytes(b"")
    (tree / "app/big.bin").write_bytes(os.urandom(BIG))
    entries = [replace(e, encrypted=e.path.startswith(("app/", "a/b/"))) if e.kind == "file" else e
               for e in directory_entries(tree)]
    archive_path = base / "enc.efs"
    with open(archive_path, "wb") as out:
        pack(entries, out, code_key=CODE_KEY)
    out = base / "embedfs_tool"
    inject(tool, archive_path, out)
    return out, archive_path


def run_keyed(binary: Path, elf: str | Path, key: bytes | None, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "EMBEDFS_CODE_KEY"}
    if key is not None:
        env["EMBEDFS_CODE_KEY"] = key.hex()
    return subprocess.run([str(binary), str(elf), *args], capture_output=True, timeout=60, env=env)


def test_the_c_reader_decrypts_encrypted_members_as_python_does(tool: Path, injected_encrypted) -> None:
    injected, archive_path = injected_encrypted
    with Archive.open(archive_path, code_key=CODE_KEY) as arc:
        assert arc.encrypted
        for binary, elf in ((tool, injected), (injected, "self")):
            assert ok(binary, elf, "root").decode() == f"{arc.root_hash} {len(arc.list())}\n"
            for member in arc.list():
                stat = run_keyed(binary, elf, None, "stat", member.path).stdout.decode()
                kind = "encrypted" if member.encrypted else member.kind
                assert stat == f"{kind} {member.mode:o} {member.size} {member.sha256}\n"
                got = run_keyed(binary, elf, CODE_KEY, "cat", member.path)
                assert got.returncode == 0, got.stderr
                assert got.stdout == arc.read(member.path), member.path


def test_the_c_reader_refuses_encrypted_members_without_or_with_a_wrong_key(tool: Path, injected_encrypted) -> None:
    injected, _ = injected_encrypted
    missing = run_keyed(tool, injected, None, "cat", "app/secret.py")
    assert missing.returncode == 2 and b"has no code key" in missing.stderr and missing.stdout == b""
    assert len(missing.stderr.splitlines()) == 1
    wrong = run_keyed(tool, injected, bytes(32), "cat", "app/secret.py")
    assert wrong.returncode == 2 and b"check: code decryption" in wrong.stderr and wrong.stdout == b""
    plain = run_keyed(tool, injected, None, "cat", "z")  # the other members read as before
    assert plain.returncode == 0 and plain.stdout == b"last\n"


def test_the_c_reader_refuses_tampered_ciphertext(tool: Path, injected_encrypted, tmp_path: Path) -> None:
    _, archive_path = injected_encrypted
    data = bytearray(archive_path.read_bytes())
    member = Archive.open(bytes(data)).stat("app/secret.py")
    data[member.data_offset + member.data_length - 1] ^= 0x40  # the GCM tag
    damaged = tmp_path / "damaged.efs"
    damaged.write_bytes(bytes(data))
    out = tmp_path / "embedfs_tool"
    inject(tool, damaged, out)
    result = run_keyed(tool, out, CODE_KEY, "cat", "app/secret.py")
    assert result.returncode == 2 and b"check: file sha256" in result.stderr and result.stdout == b""
