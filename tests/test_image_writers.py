"""Writing layers and images fast: LayerWriter (one pass, two cores) and kernel-side blob copies."""

from __future__ import annotations

import errno
import gc
import hashlib
import gzip
import io
import zlib
import os
import tarfile
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
import zstandard

from sconify.conversion.direct import DirectWriter
from sconify.errors import ImageError
from sconify.image import layers as L
from sconify.image import model
from sconify.image import prefetch as prefetch_module
from sconify.image.archive import _write_tar
from sconify.image.layerwriter import LayerWriter
from sconify.image.model import Image, Layer, canonical_json
from sconify.image.prefetch import BlobPrefetch, same_filesystem
from sconify.image.rootfs import RootFS
from sconify.image.transports import read_image, write_image
from sconify.conversion.newlayers import TarEntry, write_layer_tar
from sconify.conversion.pipeline import prefetch_input_blobs

FILE_TRANSPORTS = ("oci", "oci-archive", "docker-archive")


def some_files(seed: int = 0) -> dict[str, bytes]:
    """Text that compresses, bytes that do not, and an empty file: several MiB in all."""
    noise = hashlib.shake_256(str(seed).encode()).digest(3 << 20)
    text = b"".join(b"line %d of a python module\n" % i for i in range(120_000))
    return {"app/code.py": text, "app/data/blob": noise, "app/empty": b""}


def write_tar(stream, files: dict[str, bytes]) -> None:
    with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def tar_bytes(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    write_tar(out, files)
    return out.getvalue()


def one_layer_image(layer: Layer) -> Image:
    config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]}}
    return Image(canonical_json(config), (layer,))


def ref(transport: str, path: Path) -> str:
    return f"{transport}:{path}" + (":x" if transport == "oci" else ".tar:x")


# --- LayerWriter ---------------------------------------------------------------------------


@pytest.mark.parametrize("compression", L.COMPRESSIONS)
def test_layer_writer_gives_the_bytes_and_digests_of_compress_stream(tmp_path, compression):
    files = some_files()
    expected_blob = io.BytesIO()
    diff_id, digest, size = L.compress_stream(io.BytesIO(tar_bytes(files)), expected_blob, compression)
    with LayerWriter(compression, directory=tmp_path, source="test layer") as writer:
        write_tar(writer.stream, files)
    layer = writer.layer
    assert (layer.diff_id, layer.digest, layer.size) == (diff_id, digest, size)
    assert layer.trusted and layer.compression == compression
    assert layer.media_type == L.OCI_LAYER_MEDIA_TYPES[compression]
    with layer.opener() as blob:
        assert blob.read() == expected_blob.getvalue()
    # and it reads back as a layer whose digests check out
    untrusted = replace(layer, trusted=False)
    untrusted.verify()
    assert RootFS.from_image(one_layer_image(untrusted)).read("app/code.py") == files["app/code.py"]


def test_zstd_layer_digest_does_not_depend_on_the_thread_count(tmp_path, monkeypatch):
    files = some_files()
    digests = set()
    for threads in (1, 2, 3):
        monkeypatch.setattr(L, "ZSTD_THREADS", threads)
        with LayerWriter("zstd", directory=tmp_path) as writer:
            write_tar(writer.stream, files)
        digests.add(writer.layer.digest)
    assert len(digests) == 1


def marked_layer(tmp_path: Path, compression: str) -> tuple[Layer, bytes]:
    """A layer (and its tar) whose noise file is written inside ``incompressible``, as the code
    layer writes the embedfs archive inside the executable."""
    files = some_files()
    with LayerWriter(compression, directory=tmp_path) as writer:

        def noise(sink) -> None:
            with writer.incompressible():
                sink.write(files["app/data/blob"])

        def entries(marked: bool) -> list[TarEntry]:
            def plain(sink, data: bytes):
                sink.write(data)
            return [TarEntry(path=name, kind="file", mode=0o644, size=len(data), mtime=0,
                             write=noise if marked and name == "app/data/blob" else partial(plain, data=data))
                    for name, data in files.items()]

        write_layer_tar(entries(marked=True), writer.stream)
    tar = io.BytesIO()
    write_layer_tar(entries(marked=False), tar)
    return writer.layer, tar.getvalue()


def zstd_frames(stored: bytes) -> int:
    count = 0
    while stored:
        decompressor = zstandard.ZstdDecompressor().decompressobj()
        decompressor.decompress(stored)
        stored, count = decompressor.unused_data, count + 1
    return count


def gzip_members(stored: bytes) -> list[int]:
    """The XFL byte of each member of a gzip stream (how hard its deflate worked)."""
    flags = []
    while stored:
        assert stored[:2] == b"\x1f\x8b"
        flags.append(stored[8])
        decompressor = zlib.decompressobj(31)
        decompressor.decompress(stored)
        stored = decompressor.unused_data
    return flags


@pytest.mark.parametrize("compression", L.COMPRESSIONS)
def test_an_incompressible_run_is_a_frame_or_member_of_its_own_at_the_fast_level(tmp_path, monkeypatch, compression):
    """The layer reads back to the same tar (with gzip also through Python's gzip, skopeo's and
    docker's readers are checked by the image tests); with zstd the run is a frame of its own
    (three in all) and the digest the same for every thread count, with gzip a member of its own
    in stored blocks; none ignores the marks."""
    layer, tar = marked_layer(tmp_path, compression)
    plain_diff_id, plain_digest, _ = L.compress_stream(io.BytesIO(tar), io.BytesIO(), compression)
    assert layer.diff_id == plain_diff_id
    replace(layer, trusted=False).verify()
    with layer.opener() as blob:
        stored = blob.read()
    if compression == "none":
        assert layer.digest == plain_digest
        return
    if compression == "gzip":
        assert gzip.decompress(stored) == tar and layer.digest != plain_digest
        assert len(gzip_members(stored)) == 3
        noise = some_files()["app/data/blob"]
        assert noise[:32 << 10] in stored and noise[-(32 << 10):] in stored  # stored blocks: the bytes as they are
        assert marked_layer(tmp_path, compression)[0].digest == layer.digest
        return
    assert layer.digest != plain_digest and zstd_frames(stored) == 3
    digests = {layer.digest}
    for threads in (1, 3):
        monkeypatch.setattr(L, "ZSTD_THREADS", threads)
        digests.add(marked_layer(tmp_path, compression)[0].digest)
    assert len(digests) == 1


def test_the_temp_blob_lives_in_the_directory_asked_and_goes_with_the_layer(tmp_path):
    with LayerWriter("zstd", directory=tmp_path) as writer:
        write_tar(writer.stream, some_files())
    layer = writer.layer
    blobs = list(tmp_path.iterdir())
    assert len(blobs) == 1 and blobs[0].stat().st_size == layer.size
    del writer, layer
    gc.collect()
    assert list(tmp_path.iterdir()) == []


def test_a_layer_that_outlives_its_directory_goes_quietly(tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    with LayerWriter("gzip", directory=work) as writer:
        write_tar(writer.stream, {"a": b"a"})
    layer = writer.layer
    for blob in work.iterdir():
        blob.unlink()
    work.rmdir()
    del writer, layer
    gc.collect()
    assert capsys.readouterr().err == ""


def test_a_failure_while_writing_leaves_no_layer_and_no_temp_blob(tmp_path):
    with pytest.raises(RuntimeError, match="producer failed"), LayerWriter("zstd", directory=tmp_path) as writer:
        writer.stream.write(b"x" * (5 << 20))
        raise RuntimeError("producer failed")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="once its with block has ended"):
        _ = writer.layer


def test_a_failure_of_the_compressing_thread_reaches_the_producer(tmp_path, monkeypatch):
    from sconify.image import layerwriter

    def broken(self, chunk):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(layerwriter._CompressingPipe, "write", broken)
    with pytest.raises(OSError, match="No space left"), LayerWriter("zstd", directory=tmp_path) as writer:
        for _ in range(64):  # more than the queue holds: the producer must not block forever
            writer.stream.write(b"y" * L.CHUNK_SIZE)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_from_tar_file_goes_through_the_layer_writer(tmp_path, compression):
    files = some_files(1)
    tar = tmp_path / "layer.tar"
    tar.write_bytes(tar_bytes(files))
    work = tmp_path / "work"
    work.mkdir()
    layer = Layer.from_tar_file(tar, compression, directory=work)
    with LayerWriter(compression, directory=tmp_path) as writer:
        write_tar(writer.stream, files)
    assert (layer.digest, layer.diff_id) == (writer.layer.digest, writer.layer.diff_id)
    # uncompressed, the tar file itself is the blob; compressed, the blob is in ``work``
    assert len(list(work.iterdir())) == (0 if compression == "none" else 1)


# --- copying blobs --------------------------------------------------------------------------


def written_layer(tmp_path: Path, compression: str = "gzip") -> Layer:
    with LayerWriter(compression, directory=tmp_path) as writer:
        write_tar(writer.stream, some_files(2))
    return writer.layer


@pytest.mark.parametrize("transport", FILE_TRANSPORTS)
def test_trusted_file_backed_blobs_are_copied_in_the_kernel(tmp_path, monkeypatch, transport):
    copies = []
    original = model.FileRange.copy_to
    monkeypatch.setattr(model.FileRange, "copy_to", lambda self, fd: (copies.append(self), original(self, fd)))
    written = written_layer(tmp_path)
    blob = written.file_range
    layer = replace(written, opener=model.slice_opener(blob.path, 0, blob.size))  # not private: copied
    write_image(one_layer_image(layer), ref(transport, tmp_path / "out"))
    assert [c.size for c in copies] == [layer.size]
    back = read_image(ref(transport, tmp_path / "out"))
    assert back.layers[0].digest == layer.digest
    back.layers[0].verify()


def test_a_new_layers_private_blob_is_linked_into_an_oci_layout(tmp_path, monkeypatch):
    """LayerWriter's temp blob is sconify's alone: an OCI layout takes it by a hard link (no
    copy), readable by all as other blobs; it survives the temp file's removal."""
    copies = []
    monkeypatch.setattr(model.FileRange, "copy_to", lambda self, fd: copies.append(self))
    (tmp_path / "work").mkdir()
    layer = written_layer(tmp_path / "work")
    write_image(one_layer_image(layer), f"oci:{tmp_path / 'out'}:x")
    output = tmp_path / "out" / "blobs" / "sha256" / layer.digest[7:]
    assert copies == [] and os.path.samefile(output, layer.file_range.path)
    assert output.stat().st_mode & 0o777 == 0o644
    os.unlink(layer.file_range.path)
    assert hashlib.sha256(output.read_bytes()).hexdigest() == layer.digest[7:]


def test_an_output_blob_is_a_copy_not_a_link_of_the_input(tmp_path):
    layer = written_layer(tmp_path)
    write_image(one_layer_image(layer), f"oci:{tmp_path / 'a'}:x")
    copied = read_image(f"oci:{tmp_path / 'a'}:x")
    write_image(copied, f"oci:{tmp_path / 'b'}:x")
    blob_a = tmp_path / "a" / "blobs" / "sha256" / layer.digest[7:]
    blob_b = tmp_path / "b" / "blobs" / "sha256" / layer.digest[7:]
    assert blob_b.stat().st_nlink == 1 and not os.path.samefile(blob_a, blob_b)
    with blob_a.open("r+b") as handle:  # the input changed in place afterwards
        handle.write(b"\0\0\0\0")
    assert hashlib.sha256(blob_b.read_bytes()).hexdigest() == layer.digest[7:]


def input_layout(tmp_path: Path) -> tuple[Image, Path]:
    """An image read from an OCI layout (its blob a plain input file, trusted once read), and
    the path of that blob."""
    layer = written_layer(tmp_path)
    write_image(one_layer_image(layer), f"oci:{tmp_path / 'in'}:x")
    image = read_image(f"oci:{tmp_path / 'in'}:x")
    image = replace(image, layers=tuple(replace(each, trusted=True) for each in image.layers))
    return image, tmp_path / "in" / "blobs" / "sha256" / layer.digest[7:]


def test_input_blobs_copied_ahead_are_linked_into_the_layout_never_the_input(tmp_path, monkeypatch):
    """BlobPrefetch copies the input blob while the conversion runs; the layout writer links
    that private copy (no copy at write time), and the input stays a file of its own."""
    image, input_blob = input_layout(tmp_path)
    links = input_blob.stat().st_nlink
    (tmp_path / "work").mkdir()
    with BlobPrefetch(image.layers, str(tmp_path / "work")) as prefetch:
        layers = prefetch.layers(image.layers)
        copies = []
        monkeypatch.setattr(model.FileRange, "copy_to", lambda self, fd: copies.append(self))
        write_image(replace(image, layers=layers), f"oci:{tmp_path / 'out'}:x")
    output = tmp_path / "out" / "blobs" / "sha256" / image.layers[0].digest[7:]
    assert copies == [] and os.path.samefile(output, layers[0].file_range.path)
    assert not os.path.samefile(output, input_blob) and input_blob.stat().st_nlink == links
    with input_blob.open("r+b") as handle:  # the input changed in place afterwards
        handle.write(b"\0\0\0\0")
    assert hashlib.sha256(output.read_bytes()).hexdigest() == image.layers[0].digest[7:]


def test_a_copy_ahead_is_a_reflink_where_the_file_system_has_them(tmp_path, monkeypatch):
    """A cloned copy is left as the clone made it: not truncated, not copied again."""
    image, input_blob = input_layout(tmp_path)
    (tmp_path / "work").mkdir()

    def clone(source: int, target: int) -> bool:  # what FICLONE does, on file systems with reflinks
        os.copy_file_range(source, target, os.fstat(source).st_size)
        return True

    monkeypatch.setattr(prefetch_module, "clone_file", clone)
    monkeypatch.setattr(DirectWriter, "copy_from", lambda *args: pytest.fail("copied after a clone"))
    with BlobPrefetch(image.layers, str(tmp_path / "work")) as prefetch:
        copy = prefetch.layers(image.layers)[0].file_range.path
    assert Path(copy).read_bytes() == input_blob.read_bytes()


def test_a_failed_copy_ahead_leaves_the_copy_to_the_writer(tmp_path, monkeypatch):
    image, _ = input_layout(tmp_path)
    (tmp_path / "work").mkdir()
    with monkeypatch.context() as patch:
        patch.setattr(prefetch_module, "clone_file", lambda *args: False)
        patch.setattr(DirectWriter, "copy_from", lambda *args: 0)  # as if the input shrank
        with BlobPrefetch(image.layers, str(tmp_path / "work")) as prefetch:
            assert prefetch.layers(image.layers) == image.layers
            assert prefetch.layers(image.layers)[0].opener is image.layers[0].opener
    write_image(image, f"oci:{tmp_path / 'out'}:x")
    read_image(f"oci:{tmp_path / 'out'}:x").layers[0].verify()


def test_input_blobs_are_copied_ahead_only_where_a_link_can_take_them(tmp_path):
    """Only for an OCI layout on the temp directory's filesystem, and only blobs it lacks."""
    image, _ = input_layout(tmp_path)
    (tmp_path / "work").mkdir()
    work = str(tmp_path / "work")
    for destination in (f"oci-archive:{tmp_path / 'out.tar'}", f"docker-archive:{tmp_path / 'out.tar'}",
                        "docker-daemon:sconify-test:x"):
        with prefetch_input_blobs(image, destination, work) as prefetch:
            assert prefetch is None
    with prefetch_input_blobs(image, f"oci:{tmp_path / 'in'}:y", work) as prefetch:  # holds the blob
        assert prefetch.layers(image.layers) == image.layers and os.listdir(work) == []
    with prefetch_input_blobs(image, f"oci:{tmp_path / 'new' / 'layout'}:y", work) as prefetch:
        assert prefetch.layers(image.layers)[0].file_range.private
    assert same_filesystem(work, str(tmp_path / "not" / "yet"))
    assert not same_filesystem(work, "/proc/sconify")


@pytest.mark.parametrize("refused", ["copy_file_range", "both"])
def test_the_copy_falls_back_when_the_kernel_refuses(tmp_path, monkeypatch, refused):
    def no(*args):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", no)
    if refused == "both":
        monkeypatch.setattr(os, "sendfile", lambda *args: (_ for _ in ()).throw(OSError(errno.EINVAL, "Invalid")))
    layer = written_layer(tmp_path)
    out = tmp_path / "out.blob"
    with out.open("wb") as handle:
        handle.write(b"head")
        layer.copy_blob(handle)
        handle.write(b"tail")
    with layer.opener() as blob:
        assert out.read_bytes() == b"head" + blob.read() + b"tail"


def test_a_blob_shortened_after_it_was_checked_is_an_error(tmp_path):
    layer = written_layer(tmp_path)
    os.truncate(layer.file_range.path, layer.size - 100)
    with pytest.raises(ImageError, match="100 bytes short"):
        write_image(one_layer_image(layer), f"oci:{tmp_path / 'out'}:x")
    assert not (tmp_path / "out").exists()


def test_a_trusted_blob_in_memory_is_copied_without_hashing_and_its_length_checked(tmp_path):
    blob = tar_bytes({"a": b"a"})
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    layer = Layer(digest, len(blob), digest, "none", L.OCI_LAYER_MEDIA_TYPES["none"],
                  lambda: io.BytesIO(blob), "memory", trusted=True)
    out = io.BytesIO()
    layer.copy_blob(out)
    assert out.getvalue() == blob
    short = replace(layer, opener=lambda: io.BytesIO(blob[:-1]))
    with pytest.raises(ImageError, match="expected"):
        short.copy_blob(io.BytesIO())


def test_archives_are_the_bytes_tarfile_writes(tmp_path):
    layer = written_layer(tmp_path)
    members = [("blobs", None), ("blobs/sha256", None), ("x.json", b'{"a":1}'), ("blob", layer)]
    _write_tar(str(tmp_path / "fast.tar"), members)
    expected = io.BytesIO()
    with tarfile.open(fileobj=expected, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, item in members:
            info = tarfile.TarInfo(name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if item is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                archive.addfile(info)
                continue
            info.mode = 0o644
            data = item if isinstance(item, bytes) else layer.opener().read()
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    assert (tmp_path / "fast.tar").read_bytes() == expected.getvalue()


def test_a_new_layers_blob_is_synced_ahead_and_only_a_private_one(tmp_path, monkeypatch):
    """BlobPrefetch.sync writes a new layer's temp blob to disk on a thread (joined on close);
    an input blob, which the layout copies rather than links, is left alone."""
    image, _ = input_layout(tmp_path)
    (tmp_path / "new").mkdir()
    new_layer = written_layer(tmp_path / "new")
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    (tmp_path / "work").mkdir()
    with BlobPrefetch([], str(tmp_path / "work")) as prefetch:
        prefetch.sync(new_layer)
        prefetch.sync(image.layers[0])
    assert synced == [new_layer.file_range.path]
