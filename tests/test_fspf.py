"""The fspf build side and the Shield reader: regions, round trips, keys, errors."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from sconify.fspf import DEFAULT_CHUNK_SIZE, Fspf, FspfError, IntegrityError, Shield
from sconify.fspf import format as fmt


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def app_tree(tmp_path: Path) -> dict[str, dict[str, bytes]]:
    """An app dir (code) and a data dir with empty, chunk-multiple and multi-MB files."""
    data = {
        "empty.db": b"",
        "one-byte": b"x",
        "exact-chunk": os.urandom(DEFAULT_CHUNK_SIZE),
        "exact-3-chunks": os.urandom(3 * DEFAULT_CHUNK_SIZE),
        "big.bin": os.urandom(5 * 1024 * 1024 + 17),
        "nested/deeper/notes.txt": b"hello\n" * 1000,
    }
    app = {"main.py": b"print('hi')\n", "pkg/__init__.py": b"", "pkg/mod.py": os.urandom(70000)}
    write_tree(tmp_path / "src" / "app" / "data", data)
    write_tree(tmp_path / "src" / "app", app)
    return {"data": data, "app": app}


def build_app_fspf(tmp_path: Path) -> Fspf:
    fs = Fspf.create()
    fs.add_region("/", kind="kernel", protection="not-protected")
    fs.add_region("/app", kind="kernel", protection="authenticated")
    fs.add_region("/app/data", kind="kernel", protection="encrypted")
    return fs


def image_root(tmp_path: Path) -> Path:
    """The tree as it would be in the image: app code as is, data dir replaced by ciphertext."""
    root = tmp_path / "root"
    write_tree(root / "app", {k: v for k, v in snapshot(tmp_path / "src" / "app").items() if not k.startswith("data/")})
    write_tree(root / "app" / "data", snapshot(tmp_path / "out"))
    return root


def test_round_trip_through_encrypted_and_authenticated_regions(tmp_path, app_tree):
    fs = build_app_fspf(tmp_path)
    data_result = fs.add_directory("/app/data", tmp_path / "src" / "app" / "data", tmp_path / "out")
    app_result = fs.add_directory("/app", tmp_path / "src" / "app")
    assert data_result.files == len(app_tree["data"])
    assert app_result.files == len(app_tree["app"])
    assert sorted(app_result.skipped) == sorted(f"/app/data/{k}" for k in app_tree["data"])
    key, tag = fs.encrypt_to(tmp_path / "fspf")
    assert len(key) == 32 and len(tag) == 16

    shield = Shield(tmp_path / "fspf", key, tag, root=image_root(tmp_path))
    for rel, content in app_tree["data"].items():
        assert shield.read(f"/app/data/{rel}") == content
    for rel, content in app_tree["app"].items():
        assert shield.read(f"/app/{rel}") == content
    report = shield.verify_all()
    assert report.ok and report.files == len(app_tree["data"]) + len(app_tree["app"])
    assert shield.listdir("/app") == ["data", "main.py", "pkg"]
    assert shield.listdir("/app/data/nested") == ["deeper"]


def test_ciphertext_hides_content_and_has_the_announced_size(tmp_path, app_tree):
    fs = build_app_fspf(tmp_path)
    fs.add_directory("/app/data", tmp_path / "src" / "app" / "data", tmp_path / "out")
    for rel, content in app_tree["data"].items():
        stored = (tmp_path / "out" / rel).read_bytes()
        assert len(stored) == fs.stored_size(f"/app/data/{rel}", len(content))
        if len(content) >= 64:
            assert content[:64] not in stored
    assert fs.stored_size("/app/data/x", 0) == 16
    assert fs.stored_size("/app/data/x", DEFAULT_CHUNK_SIZE) == DEFAULT_CHUNK_SIZE + 16
    assert fs.stored_size("/app/data/x", DEFAULT_CHUNK_SIZE + 1) == DEFAULT_CHUNK_SIZE + 1 + 32
    assert fs.stored_size("/app/main.py", 1000) == 1000


def test_addf_leaves_its_input_unchanged(tmp_path, app_tree):
    before = snapshot(tmp_path / "src")
    fs = build_app_fspf(tmp_path)
    fs.add_directory("/app/data", tmp_path / "src" / "app" / "data", tmp_path / "out")
    fs.add_directory("/app", tmp_path / "src" / "app")
    assert snapshot(tmp_path / "src") == before


def test_protect_file_streams_one_file_with_a_random_access_reader(tmp_path):
    fs = Fspf.create()
    fs.add_region("/", protection="encrypted", chunk_size=4096)
    content = os.urandom(4096 * 7 + 5)
    out = io.BytesIO()
    record = fs.protect_file("/x.db", io.BytesIO(content), len(content), out)
    assert record.size == len(content) and out.tell() == fs.stored_size("/x.db", len(content))
    key, tag = fs.encrypt_to(tmp_path / "fspf")
    store = {"/x.db": out.getvalue()}
    shield = Shield(tmp_path / "fspf", key, tag, opener=lambda p: io.BytesIO(store[p]))
    with shield.open("/x.db") as handle:
        handle.seek(4096 * 3 - 2)
        assert handle.read(10) == content[4096 * 3 - 2 : 4096 * 3 + 8]
        handle.seek(-3, io.SEEK_END)
        assert handle.read() == content[-3:]


def test_file_names_are_bytes_as_the_kernel_takes_them_sorted_as_bytes(tmp_path):
    """A name that is not UTF-8 (os.fsdecode's lone surrogate) is recorded as its bytes; files are
    sorted by bytes, as the runtime sorts them (U+E000 sorts after U+DCFF, its bytes before 0xFF)."""
    fs = Fspf.create()
    fs.add_region("/d", protection="encrypted")
    store = {}
    for name in ("/d/\ue000", os.fsdecode(b"/d/caf\xe9-\xff")):
        out = io.BytesIO()
        fs.protect_file(name, io.BytesIO(name.encode("utf-8", "surrogateescape")), len(fmt.path_bytes(name)), out)
        store[name] = out.getvalue()
    assert [f.path for f in fs.files] == ["/d/caf\udce9-\udcff", "/d/\ue000"]
    key, tag = fs.encrypt_to(tmp_path / "fspf")
    shield = Shield(tmp_path / "fspf", key, tag, opener=lambda p: io.BytesIO(store[p]))
    assert shield.read(os.fsdecode(b"/d/caf\xe9-\xff")) == b"/d/caf\xe9-\xff"
    assert [f.path for f in Fspf.load(tmp_path / "fspf", key=key, tag=tag).files] == [f.path for f in fs.files]
    with pytest.raises(FspfError, match="NUL"):
        fmt.normalise_path("/d/a\0b")


def test_kernel_path_maps_a_region_to_where_its_files_are_stored(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_bytes(b"secret")
    fs = Fspf.create()
    fs.add_region("/")
    fs.add_region("/data", protection="encrypted", kernel_path="/encrypted/data")
    fs.add_directory("/data", tmp_path / "src", tmp_path / "root" / "encrypted" / "data")
    key, tag = fs.encrypt_to(tmp_path / "fspf")
    assert Shield(tmp_path / "fspf", key, tag, root=tmp_path / "root").read("/data/a.txt") == b"secret"


def test_a_file_belongs_to_the_region_with_the_longest_prefix():
    fs = Fspf.create()
    fs.add_region("/")
    fs.add_region("/app", protection="authenticated")
    fs.add_region("/app/data/", protection="encrypted")
    assert fs.region_for("/etc/passwd").path == "/"
    assert fs.region_for("/app/main.py").path == "/app"
    assert fs.region_for("/app/data").path == "/app/data"
    assert fs.region_for("/app/data/x/y").path == "/app/data"
    assert fs.region_for("/app/database").path == "/app"  # a prefix of components, not of characters


def test_region_rules_are_enforced():
    fs = Fspf.create()
    fs.add_region("/data", protection="encrypted")
    with pytest.raises(FspfError, match="add region / first"):
        fs.add_region("/app")
    fs.add_region("/")
    with pytest.raises(FspfError, match="already exists"):
        fs.add_region("/data/", protection="authenticated")
    with pytest.raises(FspfError, match="key length 20"):
        fs.add_region("/k", key_length=20)
    with pytest.raises(FspfError, match="chunk size"):
        fs.add_region("/c", chunk_size=0)
    with pytest.raises(FspfError, match="not absolute"):
        fs.add_region("relative")
    with pytest.raises(FspfError, match=r"'\.\.'"):
        fs.add_region("/a/../b")
    with pytest.raises(FspfError, match="ephemeral"):
        fs.add_region("/tmp", kind="ephemeral", kernel_path="/x")


@pytest.mark.parametrize("key_length", [16, 24, 32])
def test_each_key_length_round_trips(tmp_path, key_length):
    fs = Fspf.create()
    fs.add_region("/", protection="encrypted", key_length=key_length)
    out = io.BytesIO()
    record = fs.protect_file("/f", io.BytesIO(b"abc" * 1000), 3000, out)
    assert len(record.key) == key_length
    key, tag = fs.encrypt_to(tmp_path / "fspf")
    shield = Shield(tmp_path / "fspf", key, tag, opener=lambda p: io.BytesIO(out.getvalue()))
    assert shield.read("/f") == b"abc" * 1000


def test_encrypted_region_needs_an_output(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"1")
    fs = Fspf.create()
    fs.add_region("/", protection="encrypted")
    with pytest.raises(FspfError, match="pass OUT_DIR"):
        fs.add_directory("/", tmp_path / "src")
    with pytest.raises(FspfError, match="inside the source"):
        fs.add_directory("/", tmp_path / "src", tmp_path / "src" / "enc")
    with pytest.raises(FspfError, match="pass an output"):
        fs.protect_file("/f", io.BytesIO(b"1"), 1, None)
    assert fs.files == ()


def test_short_input_is_refused_and_nothing_is_recorded():
    fs = Fspf.create()
    fs.add_region("/", protection="authenticated")
    with pytest.raises(FspfError, match="input ended after 3 of 10 bytes"):
        fs.protect_file("/f", io.BytesIO(b"abc"), 10)
    assert fs.file("/f") is None


def test_not_protected_and_ephemeral_regions_record_no_files(tmp_path):
    (tmp_path / "src").mkdir()
    fs = Fspf.create()
    fs.add_region("/")
    fs.add_region("/tmp", kind="ephemeral", protection="encrypted")
    with pytest.raises(FspfError, match="not-protected region /"):
        fs.add_directory("/", tmp_path / "src")
    with pytest.raises(FspfError, match="ephemeral region /tmp"):
        fs.protect_file("/tmp/x", io.BytesIO(b""), 0, io.BytesIO())


def test_a_seeded_key_source_gives_byte_identical_outputs(tmp_path, app_tree):
    def seeded():
        counter = iter(range(1 << 30))
        return lambda n: bytes((next(counter) + i) % 256 for i in range(n))

    outputs = []
    for run in ("a", "b"):
        fs = Fspf.create(random=seeded())
        fs.add_region("/")
        fs.add_region("/app/data", protection="encrypted")
        fs.add_directory("/app/data", tmp_path / "src" / "app" / "data", tmp_path / run)
        data, key, tag = fs.encrypt_bytes()
        outputs.append((snapshot(tmp_path / run), data, key, tag))
    assert outputs[0] == outputs[1]


def test_default_keys_are_fresh_for_every_file_and_every_encryption(tmp_path):
    fs = Fspf.create()
    fs.add_region("/", protection="encrypted")
    a = fs.protect_file("/a", io.BytesIO(b"same"), 4, io.BytesIO())
    b = fs.protect_file("/b", io.BytesIO(b"same"), 4, io.BytesIO())
    assert a.key != b.key and a.file_id != b.file_id
    assert fs.encrypt_to(tmp_path / "1")[0] != fs.encrypt_to(tmp_path / "2")[0]


def test_keys_never_appear_in_reprs_or_show_output(tmp_path):
    fs = Fspf.create()
    fs.add_region("/", protection="encrypted")
    record = fs.protect_file("/a", io.BytesIO(b"x"), 1, io.BytesIO())
    assert record.key.hex() not in repr(record) and repr(record.key) not in repr(record)


def test_plaintext_fspf_round_trips_and_its_tag_changes_with_content(tmp_path):
    fs = Fspf.create()
    first = fs.save(tmp_path / "p")
    fs.add_region("/", protection="authenticated", chunk_size=1000)
    fs.protect_file("/f", io.BytesIO(b"z" * 2500), 2500)
    second = fs.save(tmp_path / "p")
    assert first != second and fs.tag == second
    loaded = Fspf.load(tmp_path / "p", tag=second)
    assert loaded.regions == fs.regions and loaded.files == fs.files
    assert Fspf.load(tmp_path / "p").to_bytes() == (tmp_path / "p").read_bytes()


def test_shield_write_returns_a_new_tag_and_refuses_the_old_fspf(tmp_path):
    fs = Fspf.create()
    fs.add_region("/", protection="encrypted")
    (tmp_path / "root").mkdir()
    with open(tmp_path / "root" / "f", "wb") as out:
        fs.protect_file("/f", io.BytesIO(b"v1"), 2, out)
    key, tag = fs.encrypt_to(tmp_path / "fspf")
    old_fspf = (tmp_path / "fspf").read_bytes()
    old_file = (tmp_path / "root" / "f").read_bytes()
    shield = Shield(tmp_path / "fspf", key, tag, root=tmp_path / "root")
    new_tag = shield.write("/f", b"version two")
    assert new_tag != tag and shield.read("/f") == b"version two"
    assert Shield(tmp_path / "fspf", key, new_tag, root=tmp_path / "root").read("/f") == b"version two"
    (tmp_path / "fspf.old").write_bytes(old_fspf)
    with pytest.raises(FspfError, match="older .rolled back. or different"):
        Shield(tmp_path / "fspf.old", key, new_tag, root=tmp_path / "root")
    (tmp_path / "root" / "f").write_bytes(old_file)  # roll back the file alone
    with pytest.raises(IntegrityError):
        Shield(tmp_path / "fspf", key, new_tag, root=tmp_path / "root").read("/f")


@pytest.mark.parametrize(
    "mangle, message",
    [
        (lambda d: d[:10], "not an fspf file"),
        (lambda d: b"ELF" + d[3:], "not an fspf file"),
        (lambda d: d[:8] + bytes([99]) + d[9:], "format version 99 is not supported"),
        (lambda d: d[:-20] + bytes([d[-20] ^ 1]) + d[-19:], "wrong key, or the fspf was modified"),
        (lambda d: d[:-1], "wrong key, or the fspf was modified"),
    ],
    ids=["truncated", "bad-magic", "unknown-version", "bit-flip", "short-tag"],
)
def test_corrupt_encrypted_fspf_gives_one_line_errors_without_keys(tmp_path, mangle, message):
    fs = Fspf.create()
    fs.add_region("/", protection="encrypted")
    fs.protect_file("/f", io.BytesIO(b"x"), 1, io.BytesIO())
    data, key, _ = fs.encrypt_bytes()
    with pytest.raises(FspfError, match=message) as caught:
        Fspf.load(mangle(data), key)
    text = str(caught.value)
    assert "\n" not in text and key.hex() not in text and fs.files[0].key.hex() not in text


def test_wrong_key_and_wrong_tag_are_refused_without_naming_the_key(tmp_path):
    fs = Fspf.create()
    fs.add_region("/", protection="encrypted")
    key, tag = fs.encrypt_to(tmp_path / "fspf")
    wrong = bytes(32)
    with pytest.raises(FspfError, match="wrong key") as caught:
        Shield(tmp_path / "fspf", wrong, tag, root=tmp_path)
    assert key.hex() not in str(caught.value)
    with pytest.raises(FspfError, match="tag is .* but .* was expected") as caught:
        Shield(tmp_path / "fspf", key, bytes(16), root=tmp_path)
    assert key.hex() not in str(caught.value)
    with pytest.raises(FspfError, match="32 bytes"):
        Shield(tmp_path / "fspf", key[:16], tag, root=tmp_path)
    with pytest.raises(FspfError, match="not hexadecimal"):
        Shield(tmp_path / "fspf", "zz", tag, root=tmp_path)


def test_corrupt_plaintext_fspf_is_detected(tmp_path):
    fs = Fspf.create()
    fs.add_region("/", protection="authenticated")
    data = bytearray(fs.to_bytes())
    data[fmt.HEADER.size + 5] ^= 0x40
    with pytest.raises(FspfError, match="corrupt fspf"):
        Fspf.load(bytes(data))


def test_a_body_with_lying_counts_is_refused_not_crashed():
    body = fmt.encode_body([fmt.Region("/", "kernel", "authenticated", "/")], [])
    for lie in (b"\xff\xff\xff\xff", b"\x00\x00\x01\x00"):
        with pytest.raises(FspfError, match="corrupt fspf"):
            fmt.decode_body(lie + body[4:])
    with pytest.raises(FspfError, match="unexpected bytes"):
        fmt.decode_body(body + b"\0")


def test_shield_write_into_an_authenticated_region_of_a_plaintext_fspf(tmp_path):
    fs = Fspf.create()
    fs.add_region("/")
    fs.add_region("/app", protection="authenticated")
    tag = fs.save(tmp_path / "fspf")
    (tmp_path / "root").mkdir()
    shield = Shield(tmp_path / "fspf", None, tag, root=tmp_path / "root")
    new_tag = shield.write("/app/config.json", b'{"a": 1}')
    assert (tmp_path / "root" / "app" / "config.json").read_bytes() == b'{"a": 1}'  # stays plaintext
    fresh = Shield(tmp_path / "fspf", None, new_tag, root=tmp_path / "root")
    assert fresh.read("/app/config.json") == b'{"a": 1}' and fresh.verify_all().ok
    (tmp_path / "root" / "app" / "config.json").write_bytes(b'{"a": 2}')
    with pytest.raises(IntegrityError, match="chunk 0: chunk tag mismatch"):
        fresh.read("/app/config.json")
