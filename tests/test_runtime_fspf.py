"""The C fspf (runtime/src/fspf.c, through runtime/build/tools/fspf_tool) is byte-compatible with
sconify.fspf: it reads what Python writes, Python's Shield reads what it writes, and it refuses
tampered files, a rolled-back fspf and a wrong key with an integrity error (exit 1) that names
the path and chunk, or the tag problem. No key ever appears in its output."""

from __future__ import annotations

import io
import os
import random
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import runtime_tool
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sconify.fspf import Fspf, FspfError, IntegrityError, Shield
from sconify.fspf import format as fmt

REPO_ROOT = Path(__file__).resolve().parent.parent
RUNTIME = REPO_ROOT / "runtime"
TOOL = RUNTIME / "build" / "tools" / "fspf_tool"

# (region, protection, key length, chunk size); files of 0, 1, chunk-1, chunk, chunk+1 bytes
# and a multi-chunk one in each (multi-MB for the 4 KiB and 64 KiB chunks).
REGIONS = [
    ("/enc16", "encrypted", 16, 16),
    ("/enc24", "encrypted", 24, 4096),
    ("/enc32", "encrypted", 32, 65536),
    ("/auth16", "authenticated", 16, 4096),
    ("/auth24", "authenticated", 24, 16),
    ("/auth32", "authenticated", 32, 65536),
]
BIG = {16: 100_003, 4096: 2 * 1024 * 1024 + 5, 65536: 3 * 1024 * 1024 + 7}

# Every key the tests create; the tool's output must never contain one.
SECRETS: set[str] = set()


def sizes(chunk: int) -> dict[str, int]:
    return {"empty": 0, "one": 1, "chunk-1": chunk - 1, "chunk": chunk, "chunk+1": chunk + 1, "big": BIG[chunk]}


@pytest.fixture(scope="module")
def tool() -> Path:
    return runtime_tool("fspf_tool")


def run(*args: object) -> subprocess.CompletedProcess:
    result = subprocess.run([str(TOOL), *map(str, args)], capture_output=True, timeout=60)
    assert result.returncode >= 0, f"fspf_tool died of signal {-result.returncode}: {result.stderr!r}"
    output = (result.stdout + result.stderr).lower()
    for secret in SECRETS:
        assert secret.encode() not in output, "a key appeared in the output of fspf_tool"
    return result


def error_of(result: subprocess.CompletedProcess) -> str:
    text = result.stderr.decode()
    assert text.startswith("fspf_tool: ") and text.count("\n") == 1, text
    return text


@dataclass
class Built:
    fspf: Path
    key: bytes
    tag: bytes
    root: Path  # stored files: root/<region>/<name>
    plain: dict[str, bytes]  # fspf path -> plaintext
    fs: Fspf

    def args(self, tag: bytes | None = None, fspf: Path | None = None) -> list[str]:
        return [str(fspf or self.fspf), self.key.hex(), (tag or self.tag).hex()]

    def stored(self, path: str) -> Path:
        return self.root / path.lstrip("/")


def build(base: Path) -> Built:
    fs = Fspf.create()
    fs.add_region("/")
    for path, protection, key_length, chunk in REGIONS:
        fs.add_region(path, protection=protection, key_length=key_length, chunk_size=chunk)
    fs.add_region("/moved", protection="encrypted", kernel_path="/store/moved", chunk_size=4096)
    fs.add_region("/scratch", kind="ephemeral")
    plain: dict[str, bytes] = {}
    root = base / "root"
    for path, protection, _, chunk in REGIONS:
        src = base / "src" / path.lstrip("/")
        src.mkdir(parents=True)
        for name, size in sizes(chunk).items():
            data = os.urandom(size)
            (src / name).write_bytes(data)
            plain[f"{path}/{name}"] = data
        if protection == "encrypted":
            fs.add_directory(path, src, root / path.lstrip("/"))
        else:
            fs.add_directory(path, src)
            shutil.copytree(src, root / path.lstrip("/"))
    key, tag = fs.encrypt_to(base / "fspf")
    SECRETS.add(key.hex())
    SECRETS.update(record.key.hex() for record in fs.files)
    return Built(base / "fspf", key, tag, root, plain, fs)


@pytest.fixture(scope="module")
def built(tool, tmp_path_factory) -> Built:
    return build(tmp_path_factory.mktemp("fspf"))


@pytest.fixture
def copy(built, tmp_path) -> Built:
    """A private copy of the built fspf and stored tree, for tests that change them."""
    shutil.copy(built.fspf, tmp_path / "fspf")
    shutil.copytree(built.root, tmp_path / "root")
    return Built(tmp_path / "fspf", built.key, built.tag, tmp_path / "root", dict(built.plain), built.fs)


def decrypted_body(fspf: Path, key: bytes) -> bytes:
    data = fspf.read_bytes()
    header, nonce = data[:16], data[16:28]
    return AESGCM(key).decrypt(nonce, data[28:], header + nonce)


def c_put(b: Built, path: str, data: bytes, tmp: Path) -> bytes:
    """Protect data as path with the C tool; store it under b.root; return the new tag."""
    (tmp / "plain").write_bytes(data)
    b.stored(path).parent.mkdir(parents=True, exist_ok=True)
    result = run("put", *b.args(), path, tmp / "plain", b.stored(path))
    assert result.returncode == 0, result.stderr
    b.tag = bytes.fromhex(result.stdout.decode().strip())
    b.plain[path] = data
    return b.tag


# ------------------------------------------------------------------ reading what Python wrote


def test_show_lists_the_regions_and_files_python_wrote(built):
    result = run("show", *built.args())
    assert result.returncode == 0, result.stderr
    expected = [
        f"region {r.path} {r.kind} {r.protection} {r.key_length} {r.chunk_size} {r.kernel_path or '-'}"
        for r in built.fs.regions
    ] + [f"file {f.path} {f.size} {f.protection} {f.chunk_size}" for f in built.fs.files]
    assert result.stdout.decode().splitlines() == expected
    assert "region /moved kernel encrypted 32 4096 /store/moved" in expected


def test_cat_gives_the_plaintext_of_every_file(built):
    for path, data in built.plain.items():
        result = run("cat", *built.args(), path, built.stored(path))
        assert result.returncode == 0, result.stderr
        assert result.stdout == data, path


# ------------------------------------------------------------------ Python reads what C writes


def test_put_is_read_back_by_python_and_by_c(copy, tmp_path):
    added = {}
    for path, protection, _, chunk in REGIONS:
        for name, size in {"new-empty": 0, "new-one": 1, "new-chunk+1": chunk + 1, "new-big": BIG[chunk] + 1}.items():
            added[f"{path}/{name}"] = os.urandom(size)
    added["/moved/deep/er/file"] = os.urandom(9000)
    for path, data in added.items():
        stored_as = copy.root / "store/moved/deep/er/file" if path.startswith("/moved/") else None
        (tmp_path / "plain").write_bytes(data)
        target = stored_as or copy.stored(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        result = run("put", *copy.args(), path, tmp_path / "plain", target)
        assert result.returncode == 0, result.stderr
        copy.tag = bytes.fromhex(result.stdout.decode().strip())
        copy.plain[path] = data
    fs = Fspf.load(copy.fspf, copy.key, copy.tag)
    SECRETS.update(record.key.hex() for record in fs.files)
    shield = Shield(copy.fspf, copy.key, copy.tag, root=copy.root)
    for path, data in copy.plain.items():
        assert shield.read(path) == data, path
    assert shield.verify_all().ok
    for path, data in added.items():
        record = fs.file(path)
        region = fs.region_for(path)
        assert (record.size, record.protection, record.chunk_size, len(record.key)) == (
            len(data), region.protection, region.chunk_size, region.key_length)
        stored = copy.root / "store/moved/deep/er/file" if path.startswith("/moved/") else copy.stored(path)
        assert stored.stat().st_size == fmt.stored_size(len(data), region.chunk_size, region.protection)
        result = run("cat", *copy.args(), path, stored)
        assert result.returncode == 0 and result.stdout == data, result.stderr
    # What C serialised is what Python would serialise for the same records.
    body = decrypted_body(copy.fspf, copy.key)
    assert fmt.encode_body(*fmt.decode_body(body)) == body


def test_c_rewrites_a_python_fspf_byte_for_byte_and_with_a_fresh_nonce(copy, tmp_path):
    original = decrypted_body(copy.fspf, copy.key)
    c_put(copy, "/enc32/extra", b"x" * 70000, tmp_path)
    first = copy.fspf.read_bytes()
    result = run("rm", *copy.args(), "/enc32/extra")
    assert result.returncode == 0, result.stderr
    copy.tag = bytes.fromhex(result.stdout.decode().strip())
    assert decrypted_body(copy.fspf, copy.key) == original  # put then rm: Python's body exactly
    assert copy.fspf.read_bytes()[16:28] != first[16:28]  # a fresh nonce per save
    assert copy.tag != bytes(first[-16:])


def test_put_replaces_a_record_with_a_fresh_key_and_file_id(copy, tmp_path):
    old = copy.fs.file("/enc24/chunk")
    old_stored = copy.stored("/enc24/chunk").read_bytes()
    old_tag = copy.tag
    c_put(copy, "/enc24/chunk", b"replaced", tmp_path)
    new = Fspf.load(copy.fspf, copy.key, copy.tag).file("/enc24/chunk")
    SECRETS.add(new.key.hex())
    assert new.key != old.key and new.file_id != old.file_id and new.size == 8
    assert Shield(copy.fspf, copy.key, copy.tag, root=copy.root).read("/enc24/chunk") == b"replaced"
    # The old ciphertext put back is refused: it is another file's (key and file id).
    (tmp_path / "old").write_bytes(old_stored)
    result = run("cat", *copy.args(), "/enc24/chunk", tmp_path / "old")
    assert result.returncode == 1 and "/enc24/chunk" in error_of(result)
    # And the fspf from before the put is refused against the new tag (rolled back).
    shutil.copy(copy.fspf, tmp_path / "new-fspf")
    result = run("show", *copy.args(fspf=tmp_path / "new-fspf", tag=old_tag))
    assert result.returncode == 1 and "tag mismatch (rolled back or replaced)" in error_of(result)


def test_rm_removes_a_record(copy):
    result = run("rm", *copy.args(), "/auth16/one")
    assert result.returncode == 0, result.stderr
    copy.tag = bytes.fromhex(result.stdout.decode().strip())
    listing = run("show", *copy.args()).stdout.decode()
    assert "file /auth16/one " not in listing and "file /auth16/empty " in listing
    shield = Shield(copy.fspf, copy.key, copy.tag, root=copy.root)
    with pytest.raises(IntegrityError, match="not recorded"):
        shield.read("/auth16/one")
    assert shield.read("/auth16/empty") == b""
    result = run("cat", *copy.args(), "/auth16/one", copy.stored("/auth16/one"))
    assert result.returncode == 1 and "/auth16/one" in error_of(result) and "not recorded" in error_of(result)
    result = run("rm", *copy.args(), "/auth16/one")
    assert result.returncode == 2 and "not recorded" in error_of(result)


def test_put_refuses_unprotected_ephemeral_and_unnormalised_paths(copy, tmp_path):
    (tmp_path / "plain").write_bytes(b"data")
    for path, message in [("/etc/passwd", "not recorded"), ("/scratch/x", "not recorded"),
                          ("/enc32/../x", "normalised"), ("/enc32//x", "normalised"), ("/enc32/x/", "normalised")]:
        result = run("put", *copy.args(), path, tmp_path / "plain", tmp_path / "out")
        assert result.returncode == 2 and message in error_of(result), (path, result.stderr)
    assert Fspf.load(copy.fspf, copy.key, copy.tag).files == copy.fs.files


# ------------------------------------------------------------------ tampering


def stored_chunk(b: Built, path: str) -> int:
    region = b.fs.region_for(path)
    return region.chunk_size + (16 if region.protection == "encrypted" else 0)


def refused(b: Built, path: str, stored: Path, *, chunk: int | None, words: str) -> str:
    result = run("cat", *b.args(), path, stored)
    message = error_of(result)
    assert result.returncode == 1, message
    assert result.stdout == b""
    where = f"integrity check failed for {path}" + (f" chunk {chunk}:" if chunk is not None else ":")
    assert where in message and words in message, message
    return message


@pytest.mark.parametrize("region", ["/enc24", "/auth16", "/enc16", "/auth32"])
def test_tampered_files_are_refused_naming_path_and_chunk(built, tmp_path, region):
    path = f"{region}/big"
    data = built.stored(path).read_bytes()
    per = stored_chunk(built, path)
    mismatch = "tag mismatch"
    target = tmp_path / "stored"

    def attempt(content: bytes, chunk: int | None, words: str) -> None:
        target.write_bytes(content)
        refused(built, path, target, chunk=chunk, words=words)

    for offset in (0, per - 1, 3 * per + 5, len(data) - 1):  # bit flips: first, tag, middle, last byte
        flipped = bytearray(data)
        flipped[offset] ^= 0x10
        attempt(bytes(flipped), offset // per, mismatch)
    attempt(data[:-1], None, "(truncated)")
    attempt(data[:-per], None, "(truncated)")
    attempt(data + b"\0", None, "(extended)")
    attempt(data + data[per : 2 * per], None, "(extended)")
    swapped = data[per : 2 * per] + data[:per] + data[2 * per :]
    attempt(swapped, 0, mismatch)
    moved = data[:per] + data[2 * per : 3 * per] + data[2 * per :]  # chunk 2 copied over chunk 1
    attempt(moved, 1, mismatch)


def flip_last(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x80])


def test_another_files_content_or_a_missing_file_is_refused(built, tmp_path):
    target = tmp_path / "stored"
    swaps = [  # (path, stored bytes presented for it, chunk, words)
        ("/enc24/one", built.stored("/enc16/one").read_bytes(), 0, "AES-GCM tag mismatch"),  # same stored size
        ("/enc24/empty", built.stored("/enc16/empty").read_bytes(), 0, "AES-GCM tag mismatch"),  # emptiness is tagged
        ("/enc32/chunk+1", built.stored("/enc32/chunk").read_bytes(), None, "stored size"),
        ("/auth16/chunk-1", built.stored("/auth16/chunk").read_bytes()[:-1], 0, "chunk tag mismatch"),
        ("/auth32/chunk+1", flip_last(built.stored("/auth32/chunk+1").read_bytes()), 1, "chunk tag mismatch"),
    ]
    for path, content, chunk, words in swaps:
        target.write_bytes(content)
        refused(built, path, target, chunk=chunk, words=words)
    refused(built, "/enc32/one", tmp_path / "missing", chunk=None, words="missing")


def test_a_rolled_back_or_replaced_fspf_and_a_wrong_key_are_refused(copy, tmp_path):
    old = tmp_path / "old-fspf"
    shutil.copy(copy.fspf, old)
    old_tag = copy.tag
    c_put(copy, "/enc32/one", b"new content", tmp_path)
    # The old fspf (same key, valid in itself) against the new tag: rolled back.
    result = run("show", *copy.args(fspf=old))
    message = error_of(result)
    assert result.returncode == 1 and "tag mismatch (rolled back or replaced)" in message
    assert copy.tag.hex() in message and old_tag.hex() in message
    # The current fspf against an old tag: replaced.
    result = run("cat", *copy.args(tag=old_tag), "/enc32/one", copy.stored("/enc32/one"))
    assert result.returncode == 1 and "tag mismatch" in error_of(result)
    # A wrong key: the tag matches, the body does not decrypt.
    wrong = bytes(32)
    result = run("show", copy.fspf, wrong.hex(), copy.tag.hex())
    assert result.returncode == 1 and "does not decrypt (wrong key)" in error_of(result)
    # A bit flipped in the ciphertext of the fspf, tag unchanged: does not decrypt either.
    data = bytearray(copy.fspf.read_bytes())
    data[40] ^= 1
    (tmp_path / "flipped").write_bytes(bytes(data))
    result = run("show", *copy.args(fspf=tmp_path / "flipped"))
    assert result.returncode == 1 and "does not decrypt" in error_of(result)


def test_plain_and_malformed_fspfs_and_bad_arguments_are_refused(built, tmp_path):
    plain_tag = built.fs.save(tmp_path / "plain-fspf")
    result = run("show", tmp_path / "plain-fspf", built.key.hex(), plain_tag.hex())
    assert result.returncode == 2 and "not encrypted" in error_of(result)
    for content, words in [(b"", "not an fspf"), (b"SCNFSPF\0\x01\x01" + bytes(20), "not an fspf"),
                           (b"SCNFSPX\0\x01\x01" + bytes(40), "not an fspf"),
                           (b"SCNFSPF\0\x01\x01" + bytes(26), "encrypted fspf is too short"),
                           (b"SCNFSPF\0\x02\x01" + bytes(40), "version 2 is not supported"),
                           (b"SCNFSPF\0\x01\x07" + bytes(40), "unknown envelope type 7")]:
        (tmp_path / "bad").write_bytes(content)
        result = run("show", tmp_path / "bad", built.key.hex(), bytes(16).hex())
        assert result.returncode == 2 and words in error_of(result), result.stderr
    result = run("show", built.fspf, "zz" * 32, built.tag.hex())
    assert result.returncode == 2 and "64 hex digits" in error_of(result)
    result = run("show", built.fspf, built.key.hex()[:-2], built.tag.hex())
    assert result.returncode == 2 and "64 hex digits" in error_of(result)
    assert run("show").returncode == 2


# ------------------------------------------------------------------ hostile fspf bodies


def seal(body: bytes, key: bytes) -> tuple[bytes, bytes]:
    data = fmt.seal_encrypted(body, key, os.urandom(12))
    return data, data[-16:]


def python_accepts(body: bytes) -> bool:
    try:
        fmt.decode_body(body)
    except FspfError:
        return False
    return True


def test_c_and_python_accept_and_refuse_the_same_mutated_bodies(built, tmp_path):
    """Differential: a body mutated (flips, cuts, insertions, count and length fields set to
    extremes) and sealed with the key reaches the C field checks; C must accept it iff Python
    does, and never crash."""
    body = decrypted_body(built.fspf, built.key)
    small = Fspf.create()
    small.add_region("/")
    small.add_region("/a", protection="authenticated", chunk_size=16)
    small.add_region("/e", protection="encrypted", key_length=24)
    small.add_region("/t", kind="ephemeral")
    small.protect_file("/a/x", io.BytesIO(b"y" * 40), 40)
    small.protect_file("/e/x", io.BytesIO(b"y" * 40), 40, io.BytesIO())
    small_body = fmt.encode_body(list(small.regions), list(small.files))
    rng = random.Random(1234)
    cases = [small_body, small_body + b"\0", small_body[:-1], b"", bytes(8), b"\xff" * 8]
    for _ in range(220):
        base = bytearray(small_body if rng.random() < 0.8 else body)
        kind = rng.randrange(5)
        at = rng.randrange(len(base))
        if kind == 0:
            base[at] ^= 1 << rng.randrange(8)
        elif kind == 1:
            base[at] = rng.choice([0, 1, 2, 3, 0x2E, 0x2F, 0x7F, 0x80, 0xC0, 0xED, 0xFF])
        elif kind == 2:
            del base[at : at + rng.randrange(1, 40)]
        elif kind == 3:
            base[at:at] = os.urandom(rng.randrange(1, 20))
        else:
            base[at : at + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x10\x00\x00\x00", b"\x00\x10"])
        cases.append(bytes(base))
    for case in cases:
        data, tag = seal(case, built.key)
        (tmp_path / "mutant").write_bytes(data)
        result = run("show", tmp_path / "mutant", built.key.hex(), tag.hex())
        accepted = python_accepts(case)
        if result.returncode == 0:
            assert accepted, f"C accepted a body Python refuses: {case.hex()}"
            regions, files = fmt.decode_body(case)
            assert len(result.stdout.splitlines()) == len(regions) + len(files)  # paths are bytes
        else:
            message = error_of(result)
            assert result.returncode == 2 and message.startswith("fspf_tool: corrupt fspf: "), message
            # C is stricter on one field only: kernel paths must be normalised (build.py always does).
            assert not accepted or "kernel path" in message, f"C refused a body Python accepts: {message}"
