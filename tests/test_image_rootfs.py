"""RootFS: the merged view of an image's layers, built from layer tars these tests write."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from sconify.errors import ImageError
from sconify.image.model import Image, Layer, canonical_json
from sconify.image.rootfs import PathNotFound, RootFS, RootFSLimits


def member(name: str, kind: str = "file", data: bytes = b"", target: str = "", mode: int | None = None):
    return (name, kind, data, target, mode)


def layer_tar(tmp_path: Path, members: list[tuple], compression: str = "gzip") -> Layer:
    """A layer from (name, kind, data, target, mode) tuples, written in the order given."""
    path = tmp_path / f"layer-{len(list(tmp_path.glob('layer-*')))}.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data, target, mode in members:
            info = tarfile.TarInfo(name)
            info.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
                         "hardlink": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE, "fifo": tarfile.FIFOTYPE}[kind]
            info.mode = mode if mode is not None else (0o755 if kind == "dir" else 0o644)
            info.linkname = target
            info.size = len(data) if kind == "file" else 0
            tar.addfile(info, io.BytesIO(data) if kind == "file" else None)
    return Layer.from_tar_file(path, compression)


def image_of(*layers: Layer) -> Image:
    config = {"architecture": "amd64", "os": "linux",
              "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]}}
    return Image(canonical_json(config), tuple(layers))


def rootfs(tmp_path: Path, *layers: list[tuple], limits: RootFSLimits | None = None) -> RootFS:
    return RootFS.from_image(image_of(*(layer_tar(tmp_path, m) for m in layers)), limits)


def test_files_of_upper_layers_replace_lower_ones_and_paths_are_normalised(tmp_path):
    fs = rootfs(
        tmp_path,
        [member("./etc/", "dir"), member("./etc/os-release", data=b"lower"), member("/usr/bin/tool", data=b"t")],
        [member("etc/os-release", data=b"upper", mode=0o600)],
    )
    assert fs.read("/etc/os-release") == b"upper"
    assert fs.entries["etc/os-release"].mode == 0o600
    assert fs.entries["etc/os-release"].layer_index == 1
    assert fs.read("usr/bin/tool") == b"t"  # the absolute member name was made relative
    assert fs.entries["usr"].kind == "dir"  # implied parent directory


def test_whiteout_removes_a_lower_file_and_a_whole_lower_directory(tmp_path):
    fs = rootfs(
        tmp_path,
        [member("a/keep", data=b"k"), member("a/gone", data=b"g"), member("d/sub/deep", data=b"x")],
        [member("a/.wh.gone"), member(".wh.d")],
    )
    assert fs.listdir("a") == ["keep"]
    assert not fs.exists("d") and not fs.exists("d/sub/deep")
    assert not any(".wh." in path for path in fs.entries)


def test_whiteout_applies_to_lower_layers_only(tmp_path):
    fs = rootfs(tmp_path, [member("f", data=b"old")], [member(".wh.f"), member("f", data=b"new")])
    assert fs.read("f") == b"new"


def test_opaque_directory_hides_lower_contents_but_keeps_its_own_layer(tmp_path):
    fs = rootfs(
        tmp_path,
        [member("app/old.py", data=b"o"), member("app/lib/x.py", data=b"x"), member("other", data=b"y")],
        [member("app/", "dir"), member("app/.wh..wh..opq"), member("app/new.py", data=b"n")],
    )
    assert fs.listdir("app") == ["new.py"]
    assert fs.read("other") == b"y"


def test_a_file_replacing_a_directory_removes_the_directory_tree(tmp_path):
    fs = rootfs(tmp_path, [member("x/y/z", data=b"z")], [member("x", data=b"file now")])
    assert fs.entries["x"].kind == "file"
    assert not fs.exists("x/y/z")


def test_symlinks_resolve_inside_the_root_like_a_chroot(tmp_path):
    fs = rootfs(tmp_path, [
        member("usr/bin/python3.11", data=b"ELF"),
        member("usr/bin/python3", "symlink", target="python3.11"),
        member("bin", "symlink", target="usr/bin"),
        member("escape", "symlink", target="../../../../usr/bin/python3"),
        member("absolute", "symlink", target="/bin/python3"),
        member("dangling", "symlink", target="/nowhere"),
    ])
    assert fs.resolve("/usr/bin/python3") == "usr/bin/python3.11"
    assert fs.resolve("/bin/python3") == "usr/bin/python3.11"
    assert fs.resolve("escape") == "usr/bin/python3.11"  # '..' stops at the root
    assert fs.resolve("absolute") == "usr/bin/python3.11"
    assert fs.resolve("/../../bin/../bin/python3") == "usr/bin/python3.11"
    assert fs.resolve("bin", follow_final=False) == "bin"
    assert fs.read("/bin/python3") == b"ELF"
    with pytest.raises(PathNotFound, match="does not exist"):
        fs.resolve("dangling")
    with pytest.raises(PathNotFound, match="not a directory"):
        fs.resolve("usr/bin/python3.11/x")


def test_symlink_loops_give_a_clear_error(tmp_path):
    fs = rootfs(tmp_path, [member("a", "symlink", target="b"), member("b", "symlink", target="/a")])
    with pytest.raises(ImageError, match="too many levels of symbolic links"):
        fs.resolve("a")


def test_entries_below_a_symlinked_directory_land_in_its_target_inside_the_root(tmp_path):
    fs = rootfs(
        tmp_path,
        [member("usr/lib/", "dir"), member("lib", "symlink", target="/../../usr/lib")],
        [member("lib/libx.so", data=b"lib")],
    )
    assert fs.entries["usr/lib/libx.so"].kind == "file"
    assert fs.entries["lib"].kind == "symlink"
    assert fs.read("lib/libx.so") == b"lib"


def test_hardlinks_keep_the_bytes_they_were_made_with(tmp_path):
    fs = rootfs(
        tmp_path,
        [member("bin/a", data=b"shared"), member("bin/b", "hardlink", target="bin/a")],
        [member("bin/c", "hardlink", target="./bin/a"), member("bin/a", data=b"replaced")],
    )
    assert fs.entries["bin/b"].kind == "hardlink" and fs.entries["bin/b"].linkname == "bin/a"
    assert fs.read("bin/b") == b"shared"
    assert fs.read("bin/c") == b"shared"
    assert fs.read("bin/a") == b"replaced"


@pytest.mark.parametrize("members, message", [
    ([member("../etc/passwd", data=b"x")], "contains '..'"),
    ([member("a/../../b", data=b"x")], "contains '..'"),
    ([member("h", "hardlink", target="/etc/shadow")], "not a regular file"),
    ([member("d/", "dir"), member("h", "hardlink", target="d")], "not a regular file"),
    ([member("h", "hardlink", target="../outside")], "contains '..'"),
    ([member("f", data=b"x"), member("f/g", data=b"y")], "not a directory"),
    ([member("l", "symlink", target="/missing"), member("l/x", data=b"y")], "dangling symlink"),
])
def test_hostile_or_broken_members_are_refused(tmp_path, members, message):
    with pytest.raises(ImageError, match=message):
        rootfs(tmp_path, members)


def test_a_layer_whose_diff_id_is_known_skips_only_the_diff_id_check(tmp_path):
    """diff_ids_known spares hashing the inflated tar of a layer whose diff_id the caller has
    computed before from a blob of the same digest; the blob digest is still checked."""
    from dataclasses import replace

    layer = layer_tar(tmp_path, [member("app/x", data=b"x" * 5000)])
    wrong_diff_id = replace(layer, diff_id="sha256:" + "0" * 64)
    with pytest.raises(ImageError, match=r"\(diff_id\) has digest"):
        RootFS.from_image(image_of(wrong_diff_id))
    assert RootFS.from_image(image_of(wrong_diff_id), diff_ids_known={0}).read("app/x") == b"x" * 5000
    wrong_digest = replace(wrong_diff_id, digest="sha256:" + "1" * 64)
    with pytest.raises(ImageError, match="sha256:1111"):
        RootFS.from_image(image_of(wrong_digest), diff_ids_known={0})


def test_device_nodes_and_fifos_are_skipped_and_recorded(tmp_path):
    fs = rootfs(tmp_path, [member("dev/null", "chr"), member("run/pipe", "fifo"), member("ok", data=b"1")])
    assert not fs.exists("dev/null") and not fs.exists("run/pipe")
    assert sorted(fs.skipped) == [("dev/null", "device"), ("run/pipe", "fifo")]


@pytest.mark.parametrize("limits, members, message", [
    (RootFSLimits(max_entries=3), [member(f"f{i}", data=b"") for i in range(4)], "more than 3 layer entries"),
    (RootFSLimits(max_name_length=10), [member("a/" + "n" * 11, data=b"")], "longer than 10 bytes"),
    (RootFSLimits(max_path_length=20), [member("a/" * 11 + "f", data=b"")], "longer than 20 bytes"),
    (RootFSLimits(max_total_size=10), [member("a", data=b"123456"), member("b", data=b"123456")], "more than 10 bytes"),
    (RootFSLimits(max_symlink_hops=2), [member("c", "symlink", target="b"), member("b", "symlink", target="a"),
                                        member("a", "symlink", target="x"), member("x/", "dir"), member("c/f", data=b"")],
     "too many levels of symbolic links"),
])
def test_limits_bound_hostile_layers(tmp_path, limits, members, message):
    with pytest.raises(ImageError, match=message):
        rootfs(tmp_path, members, limits=limits)


def test_iter_files_streams_each_layer_once_in_layer_order(tmp_path):
    fs = rootfs(
        tmp_path,
        [member("z", data=b"Z" * 5000), member("a", data=b"A"), member("m", data=b"M" * 70000)],
        [member("b", data=b"B"), member("ln", "hardlink", target="z")],
    )
    opened = []
    for layer in fs.image.layers:
        original = layer.opener
        object.__setattr__(layer, "opener", lambda original=original, d=layer.digest: (opened.append(d), original())[1])
    got = [(entry.path, stream.read()) for entry, stream in fs.iter_files(["/b", "m", "a", "z", "ln"])]
    assert [path for path, _ in got] == ["ln", "z", "a", "m", "b"]
    assert dict(got) == {"z": b"Z" * 5000, "ln": b"Z" * 5000, "a": b"A", "m": b"M" * 70000, "b": b"B"}
    # layer 0 is reopened once for the hardlink that shares z's bytes, layer 1 read once
    assert opened == [fs.image.layers[0].digest, fs.image.layers[0].digest, fs.image.layers[1].digest]


def test_iter_files_refuses_directories(tmp_path):
    fs = rootfs(tmp_path, [member("d/", "dir")])
    with pytest.raises(ImageError, match="not a regular file"):
        list(fs.iter_files(["d"]))


def test_walk_lists_directories_top_down_without_following_symlinks(tmp_path):
    fs = rootfs(tmp_path, [member("a/b/f", data=b""), member("a/g", data=b""), member("a/l", "symlink", target="/")])
    assert list(fs.walk()) == [("", ["a"], []), ("a", ["b"], ["g", "l"]), ("a/b", [], ["f"])]


def test_cached_gzip_layers_give_the_same_bytes_as_a_second_inflate(python_image):
    """cache_gzip_layers keeps the tars the index pass inflated; reads are then preads of them."""
    from sconify.image.transports import read_image

    image = read_image(f"oci:{python_image}:latest")
    assert {layer.compression for layer in image.layers} == {"gzip"}
    paths = ["usr/bin/python3.11", "app/main.py", "app/data/readings.csv", "app/data/readings-latest.csv",
             "usr/lib/python3.11/json/decoder.py"]
    plain = RootFS.from_image(image)
    expected = {entry.path: stream.read() for entry, stream in plain.iter_files(paths)}
    with RootFS.from_image(image, cache_layers=True) as cached:
        assert sorted(cached._layer_cache) == list(range(len(image.layers)))
        assert {entry.path: stream.read() for entry, stream in cached.iter_files(paths)} == expected
        assert cached.read("etc/sconify-demo/defaults.json") == plain.read("etc/sconify-demo/defaults.json")
    assert cached._layer_cache == {}


def test_kept_files_are_read_from_the_kept_tars_the_others_by_a_pass_over_their_layer(python_image):
    """With ``keep``, the index pass writes only the accepted files' bytes into its temp tars
    (at their offsets: the rest are holes). Kept files are preads of them; the others come from
    a second pass over the layer, byte for byte the same, and a hardlink follows its target."""
    import os
    import random

    from sconify.image.transports import read_image

    image = read_image(f"oci:{python_image}:latest")
    plain = RootFS.from_image(image, cache_layers=True)  # every file kept: the expected bytes
    files = sorted(path for path, entry in plain.entries.items() if entry.is_regular)
    random.Random(7).shuffle(files)
    keep_set = set(files[: len(files) // 2]) | {"usr/bin/python3.11"}  # 6 MB: spans several chunks
    asked = []

    def keep(path: str) -> bool:
        asked.append(path)
        return path in keep_set

    with RootFS.from_image(image, cache_layers=True, keep=keep) as fs:
        assert "usr/bin/python3.11" in asked and "usr/lib/python3.11" not in asked  # regular files only
        for path in files[:400] + files[-400:] + ["usr/bin/python3.11"]:
            entry = fs.entries[path]
            where = fs.cached_content(path)
            held = fs.entries[entry.linkname] if entry.kind == "hardlink" else entry
            if held.path in keep_set or entry.size == 0:
                assert where is not None
                fd, offset, size = where
                assert os.pread(fd, size, offset) == plain.read(path)
            else:
                assert where is None
        sample = files[:300] + files[-300:]
        assert {e.path: s.read() for e, s in fs.iter_files(sample)} == {e.path: s.read() for e, s in plain.iter_files(sample)}
    plain.close()


def test_punch_pages_frees_whole_pages_inside_the_range_and_nothing_outside(tmp_path):
    import mmap
    import os

    from sconify.image.model import punch_pages

    page = mmap.PAGESIZE
    data = bytes(range(256)) * (40 * page // 256)
    path = tmp_path / "kept"
    path.write_bytes(data)
    with open(path, "r+b") as f:
        os.fsync(f.fileno())
        blocks = os.fstat(f.fileno()).st_blocks
        # 3.5 pages from the middle of page 2: only pages 3, 4 and 5 are wholly inside
        assert punch_pages(f.fileno(), 2 * page + 100, 4 * page - 100) == 3 * page
        after = os.pread(f.fileno(), len(data), 0)
        assert after[: 3 * page] == data[: 3 * page]
        assert after[3 * page: 6 * page] == bytes(3 * page)
        assert after[6 * page:] == data[6 * page:]
        assert os.fstat(f.fileno()).st_blocks < blocks
        assert punch_pages(f.fileno(), 10, page) == 0  # no whole page inside: nothing changes
        assert os.pread(f.fileno(), 20, 0) == data[:20]
    read_end, write_end = os.pipe()
    try:
        assert punch_pages(read_end, 0, 4 * page) == 0  # cannot be punched: left as it is
    finally:
        os.close(read_end)
        os.close(write_end)


def test_released_files_give_their_pages_back_and_are_read_again_from_their_layer(python_image):
    """``release`` and ``release_all_but`` punch files' bytes out of the kept tars; asked for
    again, a released file is read by a pass over its layer, byte for byte as before, and the
    files left are still preads of the kept tar."""
    import os

    from sconify.image.transports import read_image

    image = read_image(f"oci:{python_image}:latest")
    with RootFS.from_image(image, cache_layers=True) as plain, RootFS.from_image(image, cache_layers=True) as fs:
        files = sorted(path for path, entry in fs.entries.items() if entry.is_regular and entry.size > 20000)
        big = max(files, key=lambda path: fs.entries[path].size)
        fd = fs.cached_content(big)[0]
        blocks = os.fstat(fd).st_blocks
        assert fs.release([big]) > 0
        assert os.fstat(fd).st_blocks < blocks
        assert fs.cached_content(big) is None
        assert fs.read(big) == plain.read(big)

        files.remove(big)
        # Runs of neighbours in a tar are punched as one range, the files between runs stay.
        in_tar = sorted((e.data_layer, e.data_offset, p) for p in files if (e := fs.entries[p]).kind == "file")
        released = [p for i, (_, _, p) in enumerate(in_tar[:300]) if i % 7 < 4]
        kept = [p for i, (_, _, p) in enumerate(in_tar[:300]) if i % 7 >= 4]
        assert fs.release(released) > 0
        for path in kept:
            where = fs.cached_content(path)
            assert where is not None and os.pread(where[0], where[2], where[1]) == plain.read(path)
        assert all(fs.cached_content(path) is None for path in released)
        assert {e.path: s.read() for e, s in fs.iter_files(released[:40])} == {e.path: s.read() for e, s in plain.iter_files(released[:40])}

        files = [p for p in files if p not in set(released) and fs.entries[p].kind == "file"]
        live, rest = files[:50], files[50:150]
        assert fs.release_all_but(live) > 0
        for path in live:
            where = fs.cached_content(path)
            assert where is not None and os.pread(where[0], where[2], where[1]) == plain.read(path)
        assert all(fs.cached_content(path) is None for path in rest)
        assert {e.path: s.read() for e, s in fs.iter_files(rest)} == {e.path: s.read() for e, s in plain.iter_files(rest)}


def test_uncompressed_blobs_on_disk_are_read_in_place_and_never_changed(python_image, tmp_path):
    """A kept layer whose blob is an uncompressed tar in a file (here: a docker-archive's layer
    tars, at their offsets in the archive) is not copied: its cache is the archive itself, opened
    read-only. Contents read from it are the layer's bytes, keep= guesses do not apply (every
    file is there), and release never punches the input."""
    import hashlib
    import os

    from sconify.image.transports import read_image, write_image

    archive = tmp_path / "image.tar"
    write_image(read_image(f"oci:{python_image}:latest"), f"docker-archive:{archive}", compression="none")
    before = hashlib.sha256(archive.read_bytes()).hexdigest()
    image = read_image(f"docker-archive:{archive}")
    assert {layer.compression for layer in image.layers} == {"none"}
    plain = RootFS.from_image(read_image(f"oci:{python_image}:latest"))
    paths = ["usr/bin/python3.11", "app/main.py", "app/data/readings.csv", "usr/lib/python3.11/json/decoder.py"]
    with RootFS.from_image(image, cache_layers=True, keep=lambda path: False) as fs:
        for path in paths:
            fd, offset, size = fs.cached_content(path)
            assert os.path.samestat(os.fstat(fd), os.stat(archive))
            assert offset >= fs.entries[path].data_offset and os.pread(fd, size, offset) == plain.read(path)
        assert {e.path: s.read() for e, s in fs.iter_files(paths)} == {e.path: s.read() for e, s in plain.iter_files(paths)}
        assert fs.release(paths) == 0 and fs.release_all_but(paths[:1]) == 0
        assert fs.read(paths[1]) == plain.read(paths[1])  # still read from the archive
        assert fs.cached_content(paths[2]) is not None
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == before
    assert fs._layer_cache == {}


def test_an_uncompressed_blob_read_in_place_is_still_checked_against_its_digest(tmp_path):
    layer = layer_tar(tmp_path, [member("etc/motd", data=b"hello " * 100)], compression="none")
    path = Path(layer.file_range.path)
    data = bytearray(path.read_bytes())
    data[data.index(b"hello")] = ord("j")
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="digest"):
        RootFS.from_image(image_of(layer), cache_layers=True)
