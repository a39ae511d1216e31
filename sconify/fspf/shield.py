"""Reading (and writing) files through an fspf: plaintext out, or a precise integrity error."""

from __future__ import annotations

import hmac
import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

from sconify.atomic import atomic_file
from sconify.fspf import format as fmt
from sconify.fspf.build import Fspf, check_tag, protect_stream, read_fspf_bytes
from sconify.fspf.chunks import ChunkCipher
from sconify.fspf.errors import FspfError, IntegrityError
from sconify.fspf.format import FileRecord, Region

Opener = Callable[[str], BinaryIO]


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of `Shield.verify_all`: what was checked and every problem found."""

    files: int
    bytes: int
    problems: tuple[IntegrityError, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


class Shield:
    """Files of a protected tree, read through a trusted fspf.

    `fspf_path` is a path, the fspf's bytes or a binary file; `key` is None for a plaintext
    fspf. The fspf must carry `tag` (the root of trust: an older or different fspf is refused).
    Stored files come from `root` (a directory holding the image's file system) or from
    `opener(stored_path)`. Stored paths are absolute: a kernel region's kernel path plus the
    file's path below the region.
    """

    def __init__(
        self,
        fspf_path: str | os.PathLike | bytes | BinaryIO,
        key: bytes | str | None,
        tag: bytes | str,
        *,
        root: str | os.PathLike | None = None,
        opener: Opener | None = None,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if (root is None) == (opener is None):
            raise FspfError("a Shield needs exactly one of root= or opener= to find the stored files")
        self._key = _as_bytes(key, "key")
        self._tag = _as_bytes(tag, "tag")
        if self._tag is None:
            raise FspfError("a Shield needs the fspf tag (the root of trust); pass the tag printed by `sconify fspf encrypt`")
        self._fspf_path = Path(fspf_path) if isinstance(fspf_path, (str, os.PathLike)) else None
        data = read_fspf_bytes(fspf_path)
        check_tag(data, self._tag)
        self._encrypted = fmt.envelope_of(data) == fmt.ENVELOPE_ENCRYPTED
        self._fspf = Fspf.load(data, self._key, random=random)
        self._random = random
        self._root = Path(root) if root is not None else None
        self._opener = opener or self._open_under_root

    @property
    def tag(self) -> bytes:
        return self._tag

    @property
    def fspf(self) -> Fspf:
        return self._fspf

    def open(self, path: str) -> BinaryIO:
        """A reader of the plaintext; each chunk is checked before it is returned.

        Seekable when the stored stream is; a non-seekable stream (e.g. a tar member being
        streamed) is read in order and its length checked at its end.
        """
        path = fmt.normalise_path(path)
        region = self._fspf.region_for(path)
        if region is None or region.protection == "not-protected":
            return self._open_stored(path, region)
        record = self._fspf.file(path)
        if record is None:
            raise IntegrityError(path, f"not recorded in the fspf of {region.protection} region {region.path}")
        stream = self._open_stored(path, region)
        return io.BufferedReader(_ChunkReader(record, stream), buffer_size=record.chunk_size)

    def read(self, path: str) -> bytes:
        """The whole plaintext of one file."""
        with self.open(path) as handle:
            return handle.read()

    def listdir(self, path: str = "/") -> list[str]:
        """Names directly below `path` among the recorded files (files and directories)."""
        path = fmt.normalise_path(path)
        prefix = "/" if path == "/" else path + "/"
        names = {f.path[len(prefix) :].split("/", 1)[0] for f in self._fspf.files if f.path.startswith(prefix)}
        return sorted(names)

    def verify_all(self, present: Iterable[str] | None = None) -> VerifyReport:
        """Read every recorded file; also report files in protected regions the fspf lacks.

        `present` lists the stored files' fspf paths; by default they are found below `root`
        (with only an opener, added files cannot be seen unless `present` is given).
        """
        problems: list[IntegrityError] = []
        checked = 0
        for record in self._fspf.files:
            problem = self.check_file(record.path)
            if problem is None:
                checked += record.size
            else:
                problems.append(problem)
        if present is None and self._root is not None:
            present = self._present_files()
        problems += self.added_files(sorted(present or ()))
        return VerifyReport(len(self._fspf.files), checked, tuple(problems))

    def check_file(self, path: str) -> IntegrityError | None:
        """Read one recorded file through the shield to its end: the IntegrityError found, or None."""
        record = self._fspf.file(fmt.normalise_path(path))
        if record is not None and record.protection == "symlink":
            return self._check_link(record)
        try:
            with self.open(path) as handle:
                while handle.read(1 << 20):
                    pass
        except IntegrityError as exc:
            return exc
        return None

    def added_files(self, present: Iterable[str]) -> list[IntegrityError]:
        """One IntegrityError for each of the stored ``present`` paths (in their order) that lies
        in a protected region but is not recorded in the fspf."""
        problems = []
        for path in present:
            region = self._fspf.region_for(path)
            if region is not None and region.protection != "not-protected" and self._fspf.file(path) is None:
                problems.append(IntegrityError(path, f"present but not recorded in {region.protection} region {region.path} (a file was added)"))
        return problems

    def write(self, path: str, data: bytes) -> bytes:
        """Replace or add a file (root-backed shields); re-encrypt the fspf; return the new tag.

        The file gets a fresh key and file id, so no nonce is ever reused under a key.
        """
        if self._root is None or self._fspf_path is None:
            raise FspfError("writing needs a Shield opened from an fspf path with root=; reopen it that way")
        path = fmt.normalise_path(path, "file path")
        region = self._fspf.region_for(path)
        if region is None or region.kind != "kernel":
            raise FspfError(f"{path} is not in a kernel region; add one covering it before writing")
        target = self._stored_location(path, region)
        mode = stat.S_IMODE(target.stat().st_mode) if target.exists() else 0o644
        record = None
        with atomic_file(target, mode) as dst:
            if region.protection == "not-protected":
                dst.write(data)
            else:
                out = dst if region.protection == "encrypted" else None
                record = protect_stream(path, io.BytesIO(data), len(data), out, region, self._random(region.key_length), self._random(16))
                if out is None:
                    dst.write(data)
        if record is not None:
            files = [f for f in self._fspf.files if f.path != path] + [record]
            self._fspf = Fspf(list(self._fspf.regions), files, random=self._random)
            if self._encrypted:
                _, self._tag = self._fspf.encrypt_to(self._fspf_path, self._key)
            else:
                self._tag = self._fspf.save(self._fspf_path)
        return self._tag

    def _check_link(self, record: fmt.FileRecord) -> IntegrityError | None:
        """A symlink the runtime recorded: its target (authenticated content) as stored, when a
        root to read it from was given (with only an opener it cannot be read: not checked)."""
        region = self._fspf.region_for(record.path)
        if self._root is None or region is None:
            return None
        try:
            target = os.readlink(self._stored_location(record.path, region))
        except OSError:
            return IntegrityError(record.path, "recorded symlink is missing or not a symlink")
        data = os.fsencode(target)
        cipher = ChunkCipher(record.key, record.file_id, record.path)
        count = fmt.chunk_count(record.size, record.chunk_size)
        pieces = [data[i * record.chunk_size : (i + 1) * record.chunk_size] for i in range(count)]
        if len(data) != record.size or any(
            not hmac.compare_digest(cipher.mac(i, i == count - 1, piece), tag)
            for i, (piece, tag) in enumerate(zip(pieces, record.chunk_tags))
        ):
            return IntegrityError(record.path, "symlink target mismatch (the link was changed or moved)")
        return None

    def _open_stored(self, path: str, region: Region | None) -> BinaryIO:
        stored = _stored_path(path, region)
        try:
            return self._opener(stored)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise IntegrityError(path, f"stored file {stored} is missing or not a file") from None
        except OSError as exc:
            raise FspfError(f"cannot open {stored}: {exc.strerror}; check the path and permissions") from None

    def _stored_location(self, path: str, region: Region) -> Path:
        return self._root / _stored_path(path, region).lstrip("/")

    def _open_under_root(self, stored: str) -> BinaryIO:
        target = self._root / stored.lstrip("/")
        if target.is_symlink():  # a protected file replaced by a link is tampering, not a file
            raise FileNotFoundError(stored)
        return open(target, "rb")

    def _present_files(self) -> list[str]:
        """fspf paths of the regular files stored below the kernel paths of protected regions."""
        found = []
        for region in self._fspf.regions:
            if region.protection == "not-protected" or region.kernel_path is None:
                continue
            base = self._root / region.kernel_path.lstrip("/")
            for dirpath, dirnames, filenames in os.walk(base):
                links = [name for name in dirnames if os.path.islink(os.path.join(dirpath, name))]
                for name in filenames + links:
                    rel = os.path.relpath(os.path.join(dirpath, name), base)
                    path = fmt.normalise_path(f"{region.path}/{rel}")
                    if self._fspf.region_for(path) == region:
                        found.append(path)
        return found


class _ChunkReader(io.RawIOBase):
    """Plaintext of one protected file, checked chunk by chunk.

    Random access over a seekable stream; over a non-seekable one (a layer tar being read)
    chunks are read in order and the stored length is checked as the stream ends.
    """

    def __init__(self, record: FileRecord, stream: BinaryIO) -> None:
        self._record = record
        self._stream = stream
        self._pos = 0
        self._count = fmt.chunk_count(record.size, record.chunk_size)
        self._cipher = ChunkCipher(record.key, record.file_id, record.path)
        self._sealed = record.protection == "encrypted"
        self._stored_chunk = record.chunk_size + (fmt.TAG_SIZE if self._sealed else 0)
        self._random_access = bool(getattr(stream, "seekable", lambda: False)())
        self._next = 0  # next chunk of a sequential stream
        self._cached: tuple[int, bytes] | None = None
        if self._random_access:
            self._check_length()

    def _check_length(self) -> None:
        expected = fmt.stored_size(self._record.size, self._record.chunk_size, self._record.protection)
        actual = self._stream.seek(0, io.SEEK_END)
        self._stream.seek(0)
        if actual != expected:
            self._fail_length(actual, expected)

    def _fail_length(self, actual: int, expected: int, chunk: int | None = None) -> None:
        change = "truncated" if actual < expected else "extended"
        raise IntegrityError(self._record.path, f"stored size is {actual} bytes, the fspf records {expected} ({change})", chunk)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._random_access

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if not self._random_access:
            raise io.UnsupportedOperation("the stored file is a stream; read it in order")
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._record.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        if self._pos >= self._record.size:
            if self._record.size == 0 or not self._random_access:
                self._chunk(self._count - 1)  # check the last (maybe empty) chunk and the end
            return 0
        index, skip = divmod(self._pos, self._record.chunk_size)
        data = self._chunk(index)[skip : skip + len(buffer)]
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def _chunk(self, index: int) -> bytes:
        if self._cached is not None and self._cached[0] == index:
            return self._cached[1]
        length = min(self._record.chunk_size, self._record.size - index * self._record.chunk_size)
        stored = self._read_stored(index, length + (fmt.TAG_SIZE if self._sealed else 0))
        final = index == self._count - 1
        if self._sealed:
            data = self._cipher.open(index, final, stored)
            if data is None:
                raise IntegrityError(self._record.path, "AES-GCM tag mismatch (content changed, moved or from another file)", index)
        else:
            data = stored
            if not hmac.compare_digest(self._cipher.mac(index, final, data), self._record.chunk_tags[index]):
                raise IntegrityError(self._record.path, "chunk tag mismatch (content changed, moved or from another file)", index)
        self._cached = (index, data)
        return data

    def _read_stored(self, index: int, length: int) -> bytes:
        if self._random_access:
            self._stream.seek(index * self._stored_chunk)
            return self._stream.read(length)
        expected = fmt.stored_size(self._record.size, self._record.chunk_size, self._record.protection)
        if index != self._next:
            raise io.UnsupportedOperation("the stored file is a stream; read it in order")
        stored = self._stream.read(length)
        start = index * self._stored_chunk
        if len(stored) < length:
            self._fail_length(start + len(stored), expected, index)
        self._next += 1
        if self._next == self._count and self._stream.read(1):
            self._fail_length(expected + 1, expected, index)  # at least one byte more
        return stored

    def close(self) -> None:
        if not self.closed:
            self._stream.close()
        super().close()


def _stored_path(path: str, region: Region | None) -> str:
    """Where a file's bytes are stored: its region's kernel path plus the rest of its path."""
    if region is None or region.kernel_path is None or region.kernel_path == region.path:
        return path
    rest = path[len(region.path) :] if region.path != "/" else path
    return fmt.normalise_path(region.kernel_path + "/" + rest)


def _as_bytes(value: bytes | str | None, what: str) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise FspfError(f"the {what} is not hexadecimal; pass the {what} printed by `sconify fspf encrypt`") from None
