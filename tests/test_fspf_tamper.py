"""Tampering with protected files is always detected: a corpus of attacks plus random mutations.

Each attack is applied to a small file (one chunk), a file of exactly two chunks and a
multi-chunk file, in an encrypted and in an authenticated region. The reader must refuse the
file with an IntegrityError that names it, and verify_all must report it.
"""

from __future__ import annotations

import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sconify.fspf import Fspf, IntegrityError, Shield
from sconify.fspf.format import TAG_SIZE

CHUNK = 4096
SHAPES = {"small": 100, "boundary": 2 * CHUNK, "multi": 5 * CHUNK + 123}
PROTECTIONS = ("encrypted", "authenticated")


@dataclass(frozen=True)
class Built:
    fspf: Path
    key: bytes
    tag: bytes
    pristine: Path  # the stored tree: root/data/<file>
    stored_chunk: int  # bytes per stored chunk


def build(base: Path, protection: str) -> Built:
    src = base / "src"
    src.mkdir(parents=True)
    for shape, size in SHAPES.items():
        for twin in ("a", "b"):
            (src / f"{twin}-{shape}").write_bytes(os.urandom(size))
    fs = Fspf.create()
    fs.add_region("/")
    fs.add_region("/data", protection=protection, chunk_size=CHUNK)
    pristine = base / "pristine"
    if protection == "encrypted":
        fs.add_directory("/data", src, pristine / "data")
    else:
        fs.add_directory("/data", src)
        shutil.copytree(src, pristine / "data")
    key, tag = fs.encrypt_to(base / "fspf")
    return Built(base / "fspf", key, tag, pristine, CHUNK + (TAG_SIZE if protection == "encrypted" else 0))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Built]:
    return {p: build(tmp_path_factory.mktemp(p), p) for p in PROTECTIONS}


# An attack changes the stored tree and returns the fspf path that must be reported.
Attack = Callable[[Path, Path, int], str]


def flip(offset_of: Callable[[int], int]) -> Attack:
    def attack(target: Path, twin: Path, chunk: int) -> str:
        data = bytearray(target.read_bytes())
        data[offset_of(len(data))] ^= 0x01
        target.write_bytes(bytes(data))
        return target.name

    return attack


def rewrite(change: Callable[[bytes, bytes, int], bytes]) -> Attack:
    def attack(target: Path, twin: Path, chunk: int) -> str:
        target.write_bytes(change(target.read_bytes(), twin.read_bytes(), chunk))
        return target.name

    return attack


def swap_files(target: Path, twin: Path, chunk: int) -> str:
    a, b = target.read_bytes(), twin.read_bytes()
    target.write_bytes(b)
    twin.write_bytes(a)
    return target.name


def rename(target: Path, twin: Path, chunk: int) -> str:
    target.rename(target.with_name("renamed"))
    return target.name


def rename_over_twin(target: Path, twin: Path, chunk: int) -> str:
    target.replace(twin)
    return target.name


def delete(target: Path, twin: Path, chunk: int) -> str:
    target.unlink()
    return target.name


def add_copy(target: Path, twin: Path, chunk: int) -> str:
    shutil.copyfile(target, target.with_name("added"))
    return "added"


def symlink_to_twin(target: Path, twin: Path, chunk: int) -> str:
    target.unlink()
    target.symlink_to(twin.name)
    return target.name


ATTACKS: dict[str, tuple[Attack, bool]] = {  # name -> (attack, needs two or more chunks)
    "flip-first-byte": (flip(lambda n: 0), False),
    "flip-middle-byte": (flip(lambda n: n // 2), False),
    "flip-last-byte": (flip(lambda n: n - 1), False),
    "truncate-one-byte": (rewrite(lambda d, t, c: d[:-1]), False),
    "truncate-to-empty": (rewrite(lambda d, t, c: b""), False),
    "drop-last-chunk": (rewrite(lambda d, t, c: d[: (len(d) - 1) // c * c]), True),
    "drop-first-chunk": (rewrite(lambda d, t, c: d[c:]), True),
    "extend-one-byte": (rewrite(lambda d, t, c: d + b"\0"), False),
    "extend-with-copy-of-last-chunk": (rewrite(lambda d, t, c: d + d[(len(d) - 1) // c * c :]), False),
    "swap-first-two-chunks": (rewrite(lambda d, t, c: d[c : 2 * c] + d[:c] + d[2 * c :]), True),
    "copy-chunk-from-other-position": (rewrite(lambda d, t, c: d[c : 2 * c] + d[c:]), True),
    "copy-chunk-from-other-file": (rewrite(lambda d, t, c: t[:c] + d[c:]), False),
    "content-from-other-file": (rewrite(lambda d, t, c: t), False),
    "swap-with-other-file": (swap_files, False),
    "rename": (rename, False),
    "rename-over-other-file": (rename_over_twin, False),
    "delete": (delete, False),
    "add-file": (add_copy, False),
    "replace-with-symlink-to-other-file": (symlink_to_twin, False),
}

CASES = [
    pytest.param(protection, shape, name, id=f"{protection}-{shape}-{name}")
    for protection in PROTECTIONS
    for shape in SHAPES
    for name, (_, multi_chunk) in ATTACKS.items()
    if not (multi_chunk and shape == "small")
]


def test_the_corpus_has_at_least_30_cases_per_protection():
    assert len([c for c in CASES if c.values[0] == "encrypted"]) >= 30


@pytest.mark.parametrize("protection, shape, name", CASES)
def test_tampering_is_detected(built, tmp_path, protection, shape, name):
    setup = built[protection]
    root = tmp_path / "root"
    shutil.copytree(setup.pristine, root, symlinks=True)
    attack, _ = ATTACKS[name]
    reported = "/data/" + attack(root / "data" / f"a-{shape}", root / "data" / f"b-{shape}", setup.stored_chunk)

    shield = Shield(setup.fspf, setup.key, setup.tag, root=root)
    with pytest.raises(IntegrityError) as caught:
        shield.read(reported)
    assert caught.value.path == reported
    assert "\n" not in str(caught.value) and setup.key.hex() not in str(caught.value)
    report = shield.verify_all()
    assert reported in {p.path for p in report.problems}


def test_integrity_errors_name_the_chunk(built, tmp_path):
    setup = built["encrypted"]
    root = tmp_path / "root"
    shutil.copytree(setup.pristine, root)
    target = root / "data" / "a-multi"
    data = bytearray(target.read_bytes())
    data[3 * setup.stored_chunk + 7] ^= 0x80
    target.write_bytes(bytes(data))
    shield = Shield(setup.fspf, setup.key, setup.tag, root=root)
    with pytest.raises(IntegrityError, match="a-multi chunk 3: AES-GCM tag mismatch") as caught:
        shield.read("/data/a-multi")
    assert caught.value.chunk == 3
    with shield.open("/data/a-multi") as handle:  # chunks before the damage still read
        assert len(handle.read(3 * CHUNK)) == 3 * CHUNK


def test_untouched_tree_verifies(built):
    for setup in built.values():
        report = Shield(setup.fspf, setup.key, setup.tag, root=setup.pristine).verify_all()
        assert report.ok and report.files == 2 * len(SHAPES)


mutations = st.one_of(
    st.tuples(st.just("flip"), st.integers(min_value=0), st.integers(min_value=0, max_value=7)),
    st.tuples(st.just("truncate"), st.integers(min_value=1, max_value=100)),
    st.tuples(st.just("extend"), st.binary(min_size=1, max_size=100)),
    st.tuples(st.just("overwrite"), st.integers(min_value=0), st.binary(min_size=1, max_size=40)),
)


def mutate(stored: bytes, mutation: tuple) -> bytes:
    kind = mutation[0]
    if not stored and kind in ("flip", "overwrite"):  # nothing to change: add bytes instead
        return bytes([1]) if kind == "flip" else mutation[2]
    if kind == "flip":
        data = bytearray(stored)
        data[mutation[1] % len(data)] ^= 1 << mutation[2]
        return bytes(data)
    if kind == "truncate":
        return stored[: max(0, len(stored) - mutation[1])]
    if kind == "extend":
        return stored + mutation[1]
    start = mutation[1] % len(stored)
    patch = mutation[2][: len(stored) - start]
    return stored[:start] + patch + stored[start + len(patch) :]


class Stream(io.RawIOBase):
    """A non-seekable stream of bytes, like a tar member read from a compressed layer."""

    def __init__(self, data: bytes) -> None:
        self._source = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self._source.readinto(buffer)


def opener_for(stored: bytes, seekable: bool):
    return lambda path: io.BytesIO(stored) if seekable else Stream(stored)


def test_a_non_seekable_stored_stream_is_read_in_order_and_checked_at_its_end():
    fs = Fspf.create()
    fs.add_region("/", protection="encrypted", chunk_size=1024)
    content = os.urandom(5000)
    out = io.BytesIO()
    fs.protect_file("/f", io.BytesIO(content), len(content), out)
    data, key, tag = fs.encrypt_bytes()
    stored = out.getvalue()
    assert Shield(data, key, tag, opener=lambda p: Stream(stored)).read("/f") == content
    with pytest.raises(IntegrityError, match="extended"):
        Shield(data, key, tag, opener=lambda p: Stream(stored + b"!")).read("/f")
    with pytest.raises(IntegrityError, match="truncated") as caught:
        Shield(data, key, tag, opener=lambda p: Stream(stored[:-1])).read("/f")
    assert caught.value.chunk == 4


@settings(max_examples=300, deadline=None)
@given(
    content=st.binary(max_size=700),
    chunk_size=st.sampled_from([16, 64, 100, 256]),
    protection=st.sampled_from(PROTECTIONS),
    mutation=mutations,
    seekable=st.booleans(),
)
def test_random_mutations_are_always_detected(content, chunk_size, protection, mutation, seekable):
    fs = Fspf.create()
    fs.add_region("/", protection=protection, chunk_size=chunk_size)
    out = io.BytesIO()
    fs.protect_file("/f", io.BytesIO(content), len(content), out if protection == "encrypted" else None)
    stored = out.getvalue() if protection == "encrypted" else content
    tampered = mutate(stored, mutation)
    data, key, tag = fs.encrypt_bytes()
    if tampered == stored:
        return  # e.g. an overwrite with the same bytes: nothing was changed
    shield = Shield(data, key, tag, opener=opener_for(tampered, seekable))
    with pytest.raises(IntegrityError):
        shield.read("/f")


@settings(max_examples=150, deadline=None)
@given(content=st.binary(max_size=2000), chunk_size=st.integers(min_value=16, max_value=600), seekable=st.booleans())
def test_any_content_round_trips(content, chunk_size, seekable):
    for protection in PROTECTIONS:
        fs = Fspf.create()
        fs.add_region("/", protection=protection, chunk_size=chunk_size)
        out = io.BytesIO()
        fs.protect_file("/f", io.BytesIO(content), len(content), out if protection == "encrypted" else None)
        stored = out.getvalue() if protection == "encrypted" else content
        data, key, tag = fs.encrypt_bytes()
        assert Shield(data, key, tag, opener=opener_for(stored, seekable)).read("/f") == content
