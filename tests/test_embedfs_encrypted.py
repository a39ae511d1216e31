"""Encrypted members of an embedfs archive (version 2, embedfs.codecrypt): code that must stay
secret is stored sealed under a code key kept outside the image, still covered by the root
hash (and so MRENCLAVE) through the SHA-256 of its stored bytes."""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from embedfs.archive import FLAG_ENCRYPTED, HEADER, MAGIC, VERSION, VERSION_ENCRYPTED, Archive, ArchiveEntry, pack
from embedfs.codecrypt import NONCE_SIZE, OVERHEAD
from embedfs.errors import InputError, IntegrityError, KeyRequiredError

KEY = bytes(range(32))
SECRET = b"def secret_algorithm(x):\n    return x * 1337  # the-distinctive-secret\n"
BIG = os.urandom(2 * (1 << 20) + 777)  # three chunks: three frames, sealed as one


def entries(secret: bytes = SECRET, *, encrypted: bool = True) -> list[ArchiveEntry]:
    def file(path: str, data: bytes, enc: bool = False) -> ArchiveEntry:
        return ArchiveEntry(path, "file", 0o644, 0, 0, len(data), source=data, encrypted=enc and encrypted)

    return [
        file("app/algo.py", secret, True),
        file("app/big.so", BIG, True),
        file("app/empty.py", b"", True),
        file("usr/lib/python3.11/os.py", b"import sys\n" * 50),
        ArchiveEntry("app/link.py", "symlink", 0o777, 0, 0, 0, linkname="algo.py"),
    ]


def packed(items: list[ArchiveEntry], key: bytes | None = KEY) -> bytes:
    out = io.BytesIO()
    pack(items, out, code_key=key)
    return out.getvalue()


def test_encrypted_members_round_trip_with_the_code_key() -> None:
    data = packed(entries())
    magic, version, flags, _ = HEADER.unpack_from(data)
    assert (magic, version, flags) == (MAGIC, VERSION_ENCRYPTED, FLAG_ENCRYPTED)
    with Archive.open(data, code_key=KEY) as arc:
        assert arc.read("app/algo.py") == SECRET
        assert arc.read("app/big.so") == BIG
        assert arc.read("app/empty.py") == b""
        assert arc.read("usr/lib/python3.11/os.py") == b"import sys\n" * 50
        assert [m.path for m in arc.encrypted] == ["app/algo.py", "app/big.so", "app/empty.py"]
        algo = arc.stat("app/algo.py")
        assert algo.kind == "file" and algo.encrypted and algo.size == len(SECRET)
        # the recorded hash is of the stored bytes, never of the plaintext
        stored = data[algo.data_offset:algo.data_offset + algo.data_length]
        assert algo.sha256 == hashlib.sha256(stored).hexdigest() != hashlib.sha256(SECRET).hexdigest()
        assert arc.stat("app/empty.py").data_length == OVERHEAD
        assert arc.verify().file_count == 5


def test_no_plaintext_of_an_encrypted_member_is_stored() -> None:
    data = packed(entries())
    assert b"the-distinctive-secret" not in data and b"secret_algorithm" not in data
    assert BIG[1000:1064] not in data


def test_without_encrypted_members_the_archive_is_version_1_as_before() -> None:
    plain = packed(entries(encrypted=False), key=None)
    assert HEADER.unpack_from(plain)[1:3] == (VERSION, 0)
    assert plain == packed(entries(encrypted=False), key=KEY)  # the key is unused


def test_without_the_key_reading_refuses_and_verify_checks_the_stored_bytes() -> None:
    data = packed(entries())
    with Archive.open(data) as arc:
        with pytest.raises(KeyRequiredError, match="app/algo.py is encrypted code"):
            arc.read("app/algo.py")
        assert arc.read("usr/lib/python3.11/os.py").startswith(b"import sys")
        assert arc.verify().file_count == 5


def test_a_wrong_key_is_refused() -> None:
    with Archive.open(packed(entries()), code_key=os.urandom(32)) as arc:
        with pytest.raises(IntegrityError) as caught:
            arc.read("app/algo.py")
        assert caught.value.check == "code decryption"
        with pytest.raises(IntegrityError):
            arc.verify()


def test_tampered_ciphertext_is_refused_with_and_without_the_key() -> None:
    data = bytearray(packed(entries()))
    member = Archive.open(bytes(data)).stat("app/algo.py")
    data[member.data_offset + NONCE_SIZE + 3] ^= 1
    for key in (None, KEY):
        with Archive.open(bytes(data), code_key=key) as arc:
            with pytest.raises(IntegrityError) as caught:
                arc.verify()
            assert caught.value.check == "file sha256" and caught.value.path == "app/algo.py"


def test_ciphertext_moved_to_another_path_does_not_decrypt() -> None:
    """The path is associated data: a member's stored bytes are only valid at its own path."""
    from embedfs.codecrypt import CodeCipher

    cipher = CodeCipher(KEY)
    sealed = cipher.seal(b"app/a.py", b"frames")
    assert cipher.open("app/a.py", sealed) == b"frames"
    with pytest.raises(IntegrityError):
        cipher.open("app/b.py", sealed)


def test_sealing_is_deterministic_and_the_nonce_follows_the_content() -> None:
    """Same key, path and content: the same bytes (reproducible builds, --deterministic-keys-from);
    another content at the same path: another nonce (never one nonce for two messages)."""
    first, again = packed(entries()), packed(entries())
    assert first == again
    other = packed(entries(SECRET.replace(b"1337", b"1338")))
    a, b = Archive.open(first), Archive.open(other)
    ma, mb = a.stat("app/algo.py"), b.stat("app/algo.py")
    assert first[ma.data_offset:ma.data_offset + NONCE_SIZE] != other[mb.data_offset:mb.data_offset + NONCE_SIZE]
    assert a.root_hash != b.root_hash  # so the measurement changes with one encrypted file


def test_encrypting_needs_a_key_and_a_regular_file() -> None:
    with pytest.raises(InputError, match="no code key"):
        packed(entries(), key=None)
    with pytest.raises(InputError, match="only regular files"):
        packed([ArchiveEntry("l", "symlink", 0o777, 0, 0, 0, linkname="x", encrypted=True)])
    with pytest.raises(InputError, match="32 bytes"):
        packed(entries(), key=b"short")


def test_the_measurement_changes_when_one_encrypted_file_changes(tmp_path) -> None:
    """MRENCLAVE covers the stored (encrypted) bytes: a changed plaintext changes it, and
    measuring needs no key."""
    import shutil

    from embedfs.elf import inject
    from embedfs.measure import measure_elf

    executable = shutil.which("true")
    measured = []
    for secret in (SECRET, SECRET.replace(b"1337", b"1338"), SECRET):
        archive = tmp_path / "a.efs"
        archive.write_bytes(packed(entries(secret)))
        out = tmp_path / f"exe-{len(measured)}"
        inject(executable, archive, out)
        measured.append(measure_elf(str(out)).mrenclave)
    assert measured[0] != measured[1] and measured[0] == measured[2]


def test_the_embedfs_cli_reads_encrypted_members_with_keys(tmp_path) -> None:
    import json
    import subprocess
    import sys

    archive = tmp_path / "a.efs"
    archive.write_bytes(packed(entries()))
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"code_key": KEY.hex()}))

    def embedfs(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", "from embedfs.cli import main; main()", *args],
                              capture_output=True, timeout=120)

    listing = json.loads(embedfs("ls", str(archive), "--json").stdout)
    assert {m["path"] for m in listing["members"] if m["encrypted"]} == {"app/algo.py", "app/big.so", "app/empty.py"}
    refused = embedfs("cat", str(archive), "app/algo.py")
    assert refused.returncode != 0 and refused.stdout == b""
    assert b"app/algo.py is encrypted code" in refused.stderr and len(refused.stderr.splitlines()) == 1
    assert embedfs("cat", str(archive), "app/algo.py", "--keys", str(keys)).stdout == SECRET
    assert embedfs("verify", str(archive)).returncode == 0
    assert embedfs("verify", str(archive), "--keys", str(keys)).returncode == 0
    keys.write_text(json.dumps({"code_key": (b"\x01" * 32).hex()}))
    wrong = embedfs("verify", str(archive), "--keys", str(keys))
    assert wrong.returncode != 0 and b"code key" in wrong.stderr and KEY.hex().encode() not in wrong.stderr
