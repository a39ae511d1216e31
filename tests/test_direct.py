"""DirectWriter: output blobs written past the page cache, to the same bytes as a plain write."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from sconify.conversion import direct
from sconify.conversion.direct import DirectWriter
from sconify.image.layerwriter import LayerWriter
from sconify.image.model import Image, canonical_json
from sconify.image.prefetch import BlobPrefetch
from sconify.image.transports import read_image, write_image


def takes_direct_io(directory: Path) -> bool:
    probe = directory / ".direct-probe"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600))
    except OSError:
        return False
    finally:
        probe.unlink(missing_ok=True)
    return True


def cached_bytes(path: Path) -> int:
    """How many bytes of ``path`` are in the page cache (util-linux fincore)."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         check=True, capture_output=True, text=True).stdout
    return int(out.split()[0])


def new_file(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)


def noise(size: int, seed: int = 0) -> bytes:
    return hashlib.shake_256(b"%d" % seed).digest(size)


@pytest.fixture
def small_buffer(monkeypatch):
    """A 64 KiB buffer, so that a few hundred KiB cross many buffer and block edges."""
    monkeypatch.setattr(direct, "BUFFER_SIZE", 64 << 10)


SIZES = [0, 1, 511, 4095, 4096, 4097, (64 << 10) - 1, 64 << 10, (64 << 10) + 1, 300_001]


@pytest.mark.parametrize("size", SIZES)
def test_writes_and_copies_give_the_bytes_in_order(tmp_path, small_buffer, size):
    source = tmp_path / "source"
    source.write_bytes(noise(size + 777, seed=size))
    expected = io.BytesIO()
    with DirectWriter(new_file(tmp_path / "out")) as out:
        for step, piece in enumerate([noise(size, 1), b"", noise(3, 2), noise(size // 3, 3)]):
            assert out.write(piece) == len(piece)
            expected.write(piece)
            with source.open("rb") as copied:  # from an offset that is no multiple of anything
                assert out.copy_from(copied.fileno(), 777, size) == size
            expected.write(source.read_bytes()[777:777 + size])
    assert (tmp_path / "out").read_bytes() == expected.getvalue()
    assert out.size == len(expected.getvalue()) and out.closed


def test_the_writes_take_no_page_cache_where_the_file_system_takes_o_direct(tmp_path):
    if not takes_direct_io(tmp_path):
        pytest.skip(f"{tmp_path} refuses O_DIRECT")
    data = noise(20 << 20)
    with DirectWriter(new_file(tmp_path / "direct")) as out:
        out.write(data[:12345])
        out.write(data[12345:])
        assert out.direct
    (tmp_path / "buffered").write_bytes(data)
    assert cached_bytes(tmp_path / "buffered") == len(data)  # fincore sees a plain write's pages
    assert cached_bytes(tmp_path / "direct") == 0
    assert (tmp_path / "direct").read_bytes() == data


def test_a_file_system_without_o_direct_gets_plain_writes(tmp_path, monkeypatch, small_buffer):
    real = direct.fcntl.fcntl

    def refuse_direct(fd, command, *arg):
        if command == direct.fcntl.F_SETFL and arg[0] & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, command, *arg)

    monkeypatch.setattr(direct.fcntl, "fcntl", refuse_direct)
    data = noise(200_001)
    with DirectWriter(new_file(tmp_path / "out")) as out:
        assert not out.direct
        out.write(data)
    assert (tmp_path / "out").read_bytes() == data


def test_alignments_refused_mid_file_turn_the_writer_to_plain_writes(tmp_path, monkeypatch, small_buffer):
    """O_DIRECT taken at open but a write refused (a block size above ALIGN): the same bytes."""
    if not takes_direct_io(tmp_path):
        pytest.skip(f"{tmp_path} refuses O_DIRECT")
    real_write = os.write
    calls = []

    def refuse_the_second_direct_write(fd, data):
        calls.append(len(data))
        if len(calls) == 2:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(direct.os, "write", refuse_the_second_direct_write)
    data = noise(300_001)
    with DirectWriter(new_file(tmp_path / "out")) as out:
        out.write(data)
        assert not out.direct
    assert (tmp_path / "out").read_bytes() == data and len(calls) > 3


def test_other_write_errors_are_raised(tmp_path, monkeypatch, small_buffer):
    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(direct.os, "write", full)
    out = DirectWriter(new_file(tmp_path / "out"))
    with pytest.raises(OSError, match="No space"):
        out.write(noise(100_000))
    with pytest.raises(OSError, match="No space"):
        out.close()  # the buffer is written once more, and fails again
    assert out.closed


def layer_tar(files: dict[str, bytes]) -> bytes:
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return stream.getvalue()


@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
def test_a_layer_written_direct_is_the_layer_written_buffered(tmp_path, compression):
    tar = layer_tar({"app/noise": noise(3 << 20), "app/text": b"some text\n" * 100_000, "app/empty": b""})
    layers = []
    for direct_io in (False, True):
        with LayerWriter(compression, directory=tmp_path, direct=direct_io) as writer:
            writer.stream.write(tar)
        layers.append(writer.layer)
    buffered, direct_layer = layers
    assert (direct_layer.digest, direct_layer.size, direct_layer.diff_id) == \
        (buffered.digest, buffered.size, buffered.diff_id)
    if takes_direct_io(tmp_path):
        assert cached_bytes(Path(direct_layer.file_range.path)) == 0
    direct_layer.verify()


def test_input_blobs_are_copied_ahead_past_the_page_cache(tmp_path):
    """BlobPrefetch's copies are bound for the output, not for reading: they take no page cache
    where the file system takes O_DIRECT, and hold the input blob's bytes."""
    if not takes_direct_io(tmp_path):
        pytest.skip(f"{tmp_path} refuses O_DIRECT")
    with LayerWriter("gzip", directory=tmp_path) as writer:
        writer.stream.write(layer_tar({"app/noise": noise(5 << 20)}))
    config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [writer.layer.diff_id]}}
    write_image(Image(canonical_json(config), (writer.layer,)), f"oci:{tmp_path / 'in'}:x")
    image = read_image(f"oci:{tmp_path / 'in'}:x")
    (tmp_path / "work").mkdir()
    with BlobPrefetch(image.layers, str(tmp_path / "work")) as prefetch:
        copy = prefetch.layers(image.layers)[0]
        assert copy.file_range.private and copy.file_range.path.startswith(str(tmp_path / "work"))
        assert cached_bytes(Path(copy.file_range.path)) == 0
        copy.verify()



def one_layer_image(tmp_path: Path) -> Image:
    with LayerWriter("gzip", directory=tmp_path) as writer:
        writer.stream.write(layer_tar({"app/noise": noise(5 << 20), "app/text": b"text\n" * 200_000}))
    config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [writer.layer.diff_id]}}
    return Image(canonical_json(config), (writer.layer,))


@pytest.mark.parametrize("transport", ["oci-archive", "docker-archive"])
def test_image_archives_are_written_past_the_page_cache(tmp_path, transport):
    """An archive is written once, then loaded or pushed: it takes no page cache, and reads back."""
    if not takes_direct_io(tmp_path):
        pytest.skip(f"{tmp_path} refuses O_DIRECT")
    image = one_layer_image(tmp_path)
    write_image(image, f"{transport}:{tmp_path / 'out.tar'}:x")
    assert cached_bytes(tmp_path / "out.tar") == 0
    [layer] = read_image(f"{transport}:{tmp_path / 'out.tar'}:x").layers
    assert (layer.digest, layer.diff_id) == (image.layers[0].digest, image.layers[0].diff_id)
    layer.verify()


def test_layout_blobs_copied_rather_than_linked_go_past_the_page_cache(tmp_path):
    """A layer the layout cannot link (here: read from another layout) is copied past the page
    cache; the small JSON blobs are plain writes."""
    if not takes_direct_io(tmp_path):
        pytest.skip(f"{tmp_path} refuses O_DIRECT")
    write_image(one_layer_image(tmp_path), f"oci:{tmp_path / 'in'}:x")
    image = read_image(f"oci:{tmp_path / 'in'}:x")
    write_image(image, f"oci:{tmp_path / 'out'}:x")
    copied = tmp_path / "out" / "blobs" / "sha256" / image.layers[0].digest[7:]
    assert not os.path.samefile(copied, tmp_path / "in" / "blobs" / "sha256" / image.layers[0].digest[7:])
    assert cached_bytes(copied) == 0
    read_image(f"oci:{tmp_path / 'out'}:x").layers[0].verify()
