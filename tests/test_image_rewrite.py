"""Input layers rewritten without their entries under protected prefixes (sconify.image.rewrite):
the merged view keeps its meaning, hardlinks across the prefix keep their bytes, whiteouts and
opaque directories stay, untouched layers stay byte for byte, and the same input gives the same
bytes. Small hand-made layered images (the demo images carry none of these cases)."""

from __future__ import annotations

from dataclasses import replace

from sconify.image.mutate import replace_layers
from sconify.image.rewrite import ProtectedPrefix, link_warnings, plan_rewrites, rewrite_layers
from sconify.image.rootfs import RootFS
from tests.test_image_rootfs import image_of, layer_tar, member

SECRETS = {name: f"secret {name} ".encode() * 40 for name in ("config", "db", "old", "new")}
PUBLIC = b"public documentation " * 20


def layered_image(tmp_path):
    return image_of(
        layer_tar(tmp_path, [
            member("app/", "dir", mode=0o750),
            member("app/data/", "dir", mode=0o700),
            member("app/data/config.json", data=SECRETS["config"], mode=0o600),
            member("app/data/sub/", "dir", mode=0o711),
            member("app/data/sub/db", data=SECRETS["db"]),
            member("app/data/link", "symlink", target="config.json"),
            member("app/data/old", data=SECRETS["old"]),
            member("usr/share/doc.txt", data=PUBLIC),
            member("usr/share/copy", "hardlink", target="app/data/config.json"),  # into the region
            member("app/data/hl", "hardlink", target="usr/share/doc.txt"),  # out of the region
        ]),
        layer_tar(tmp_path, [
            member("app/data/.wh.old"),  # an upper whiteout of a protected file
            member("app/data/sub/", "dir", mode=0o711),
            member("app/data/sub/.wh..wh..opq"),
            member("app/data/sub/new", data=SECRETS["new"]),
            member("usr/bin/tool", data=b"tool"),
        ], compression="zstd"),
        layer_tar(tmp_path, [member("usr/share/copy2", "hardlink", target="app/data/config.json")]),
        layer_tar(tmp_path, [member("etc/hostname", data=b"host")]),
    )


def view(fs: RootFS, leave_out: str = "") -> dict:
    """path -> what the merged view holds there (regular files by content, whatever their link)."""
    result = {}
    for path, entry in fs.entries.items():
        if leave_out and path.startswith(leave_out + "/") and entry.is_regular:
            continue
        content = fs.read(path) if entry.is_regular else entry.linkname
        result[path] = ("regular" if entry.is_regular else entry.kind, entry.mode, entry.uid, entry.gid, content)
    return result


def rewritten(image, tmp_path):
    with RootFS.from_image(image) as fs:
        rewrites = plan_rewrites(fs, [ProtectedPrefix("/app/data", "encrypted region")])
        layers = rewrite_layers(image.layers, rewrites, str(tmp_path))
        return replace_layers(image, layers), rewrites


def test_the_merged_view_is_the_input_s_without_the_protected_files(tmp_path):
    image = layered_image(tmp_path)
    output, rewrites = rewritten(image, tmp_path)
    with RootFS.from_image(image) as before, RootFS.from_image(output) as after:
        expected = view(before, leave_out="app/data")
        assert view(after) == expected
        # the region's directories stay with their modes, the symlink and the upper whiteout too
        assert after.entries["app/data"].mode == 0o700 and after.entries["app/data/sub"].mode == 0o711
        assert after.entries["app/data/link"].kind == "symlink"
        assert "app/data/old" in after.whiteouts
        # a hardlink from outside into the region is a regular file of its own now
        assert after.entries["usr/share/copy"].kind == "file"
        assert after.read("usr/share/copy2") == SECRETS["config"]
        assert after.read("usr/share/doc.txt") == PUBLIC  # the target of a link out of the region stays
    assert [r.index for r in rewrites] == [0, 1, 2]
    assert [len(r.removed) for r in rewrites] == [4, 1, 0]  # config.json, sub/db, old, hl; sub/new
    assert link_warnings(rewrites)[0].startswith("/usr/share/copy is a hardlink to /app/data/config.json")


def test_untouched_layers_stay_byte_for_byte_and_rewritten_ones_keep_their_compression(tmp_path):
    image = layered_image(tmp_path)
    output, _ = rewritten(image, tmp_path)
    assert output.layers[3].digest == image.layers[3].digest
    assert [layer.compression for layer in output.layers] == ["gzip", "zstd", "gzip", "gzip"]
    assert list(output.diff_ids) == output.config["rootfs"]["diff_ids"]
    assert output.diff_ids[:3] != image.diff_ids[:3]
    for layer in output.layers:
        with layer.open_tar() as tar:
            data = tar.read()
        for name, secret in SECRETS.items():  # config's bytes live on in the outside hardlinks' copies
            assert name == "config" or secret[:32] not in data


def test_the_same_input_gives_the_same_bytes(tmp_path):
    image = layered_image(tmp_path)
    first, _ = rewritten(image, tmp_path)
    second, _ = rewritten(image, tmp_path)
    assert [layer.digest for layer in first.layers] == [layer.digest for layer in second.layers]


def test_nothing_is_rewritten_without_protected_entries(tmp_path):
    image = image_of(layer_tar(tmp_path, [member("app/data/", "dir"), member("etc/x", data=b"x")]))
    with RootFS.from_image(image) as fs:
        assert plan_rewrites(fs, [ProtectedPrefix("/app/data", "encrypted region")]) == []
        assert plan_rewrites(fs, []) == []


def test_an_opaque_region_and_a_path_through_a_symlinked_directory(tmp_path):
    """The opaque marker of the region directory itself stays (the lower files stay hidden), and
    a member written through a symlinked directory (srv -> app) is found where it lands."""
    image = image_of(
        layer_tar(tmp_path, [member("app/data/", "dir"), member("app/data/a", data=SECRETS["old"]),
                             member("srv", "symlink", target="app")]),
        layer_tar(tmp_path, [member("app/data/", "dir", mode=0o701), member("app/data/.wh..wh..opq"),
                             member("app/data/b", data=SECRETS["new"]), member("srv/data/c", data=SECRETS["db"]),
                             member("app/data/keep", "symlink", target="b")]),
    )
    output, rewrites = rewritten(image, tmp_path)
    with RootFS.from_image(image) as before, RootFS.from_image(output) as after:
        assert view(after) == view(before, leave_out="app/data")
        assert after.entries["app/data"].mode == 0o701 and not after.exists("app/data/a")
    assert [(r.index, sorted(r.removed.values())) for r in rewrites] == [
        (0, ["app/data/a"]), (1, ["app/data/b", "app/data/c"])]


def test_a_link_into_the_region_from_a_file_hidden_later_is_warned_about(tmp_path):
    """COPY s.db /stage/; RUN ln /stage/s.db /app/data/db; RUN rm /stage/s.db: the region's file
    is the bytes of /stage/s.db in layer 0, which a whiteout hides but every pull downloads."""
    image = image_of(
        layer_tar(tmp_path, [member("stage/", "dir"), member("stage/s.db", data=SECRETS["db"]), member("app/data/", "dir")]),
        layer_tar(tmp_path, [member("app/data/db", "hardlink", target="stage/s.db")]),
        layer_tar(tmp_path, [member("stage/.wh.s.db")]),
    )
    with RootFS.from_image(image) as fs:
        rewrites = plan_rewrites(fs, [ProtectedPrefix("/app/data", "encrypted region")])
    assert [r.index for r in rewrites] == [1]
    assert link_warnings(rewrites) == [
        "/app/data/db in a protected region is a hardlink to /stage/s.db, outside it: its plaintext stays in layer 0 "
        "under that name; copy the file into the region instead of linking it, or protect its directory too"]
