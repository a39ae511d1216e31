"""The embedfs archive: a deterministic, hashed, zstd-compressed set of files and symlinks.

Layout (all integers little-endian; see docs/embedfs-format.md):

    header   16 bytes  magic "EMBEDFS\\0", u16 version (1, or 2 with encrypted members),
             u16 flags (0, or 1 = FLAG_ENCRYPTED with version 2), u32 chunk size
    data     per file, in index order: its content as independent zstd frames of
             at most ``chunk size`` uncompressed bytes each
    index    one record per member, sorted by path (UTF-8 bytes)
    trailer  64 bytes  magic "EMBEDFSI", u64 index offset, u64 index size,
             u64 member count, 32-byte root hash

The root hash is SHA-256 over a domain tag and every member's canonical record (kind, mode,
uid, gid, size, SHA-256 of the content, path, link target): it names the content, not the
compression. Reading one file decompresses only that file's frames.

Version 2 adds encrypted members (kind 3, embedfs.codecrypt): their data is the AES-GCM
sealing of their frames under a code key, and their recorded SHA-256 is of those stored bytes.
An archive without encrypted members is written as version 1, byte for byte as before.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import os
import stat as stat_module
import struct
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterable, Iterator

import zstandard

from embedfs.errors import FormatError, InputError, IntegrityError, KeyRequiredError

if TYPE_CHECKING:  # cryptography loads only for encrypted members (embedfs.runtime runs without it)
    from embedfs.codecrypt import CodeCipher

MAGIC = b"EMBEDFS\x00"
TRAILER_MAGIC = b"EMBEDFSI"
VERSION = 1
VERSION_ENCRYPTED = 2  # the version of an archive holding encrypted members
FLAG_ENCRYPTED = 1  # header flag: some members are encrypted (version 2 only)
CHUNK_SIZE = 1 << 20  # uncompressed bytes per zstd frame
DEFAULT_LEVEL = 3
ROOT_DOMAIN = b"embedfs-root-v1\x00"

HEADER = struct.Struct("<8sHHI")
TRAILER = struct.Struct("<8sQQQ32s")
# kind, path length, link length, mode, uid, gid, size, data offset, data length, sha256
INDEX_RECORD = struct.Struct("<BHHIIIQQQ32s")
# the same without the data location: what the root hash covers
CANONICAL_RECORD = struct.Struct("<BHHIIIQ32s")

KIND_FILE = 1
KIND_SYMLINK = 2
KIND_ENCRYPTED_FILE = 3  # version 2: a regular file whose stored bytes are sealed (embedfs.codecrypt)
KIND_CODES = {"file": KIND_FILE, "symlink": KIND_SYMLINK}
KIND_NAMES = {code: name for name, code in KIND_CODES.items()}

MAX_PATH_BYTES = 4095
UNCLEAN_COMPONENTS = frozenset(("", ".", ".."))
# Look-ahead of the writer: uncompressed bytes, and work items, read or queued but not yet
# written. Bounds memory to a few MiB however large a file is.
PENDING_BYTES = 8 * CHUNK_SIZE
PENDING_SLOTS = 16
# Small members go to the pool in runs, so that per-task overhead (a future, a wake-up of the
# writer) is paid per run rather than per file.
BATCH_BYTES = CHUNK_SIZE
BATCH_MEMBERS = 256
# Compressed bytes read, and content bytes decompressed, per step when a large file is verified.
STREAM_PIECE = CHUNK_SIZE


Source = bytes | Callable[[], BinaryIO] | None


@dataclass(frozen=True)
class ArchiveEntry:
    """One member to pack: a regular file (content from ``source``) or a symlink."""

    path: str
    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    linkname: str = ""
    source: Source = field(default=None, compare=False, repr=False)
    encrypted: bool = False  # a file stored sealed under the code key (embedfs.codecrypt)


@dataclass(frozen=True)
class Member:
    """One member as recorded in an archive's index."""

    path: str
    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    sha256: str
    linkname: str
    data_offset: int
    data_length: int
    encrypted: bool = False  # kind 3: sha256 is of the stored (sealed) bytes, size the plaintext's


@dataclass(frozen=True)
class PackResult:
    """What ``pack`` wrote: the root hash, member count, archive bytes and per-member hashes."""

    root_hash: str
    file_count: int
    size: int
    files: dict[str, str]  # path -> SHA-256 of every member (a symlink's: of its target string)


@dataclass(frozen=True)
class VerifyResult:
    """A passed ``Archive.verify``: how much was checked."""

    root_hash: str
    file_count: int
    content_bytes: int


# ---------------------------------------------------------------------------------------------
# writing


def validate_path(path: str) -> bytes:
    """Return the UTF-8 bytes of a member path, or raise InputError if it is not a clean
    relative path (no leading '/', no '.', '..' or empty components, no NUL)."""
    if not isinstance(path, str) or not path:
        raise InputError(f"archive path {path!r} is empty; give a relative path like 'app/main.py'")
    parts = path.split("/")
    if path.startswith("/") or "\x00" in path or not UNCLEAN_COMPONENTS.isdisjoint(parts):
        raise InputError(
            f"archive path {path!r} is not a clean relative path; "
            "remove leading '/', '.', '..' and empty components"
        )
    encoded = path.encode("utf-8", "surrogateescape")
    if len(encoded) > MAX_PATH_BYTES:
        raise InputError(f"archive path {path[:60]!r}... is longer than {MAX_PATH_BYTES} bytes; shorten it")
    return encoded


def validate_entry(entry: ArchiveEntry) -> None:
    """Raise InputError if an entry's kind, mode, owner, size or link target is unusable."""
    if entry.kind not in KIND_CODES:
        raise InputError(f"{entry.path}: kind {entry.kind!r} is not supported; pack only 'file' or 'symlink'")
    if not 0 <= entry.mode <= 0o7777:
        raise InputError(f"{entry.path}: mode {entry.mode:o} is out of range; give permission bits only (0..7777)")
    for name in ("uid", "gid"):
        value = getattr(entry, name)
        if not 0 <= value < 2**32:
            raise InputError(f"{entry.path}: {name} {value} is out of range; give a 32-bit id")
    if entry.encrypted and entry.kind != "file":
        raise InputError(f"{entry.path}: only regular files can be encrypted; a symlink's target is in the index")
    if entry.kind == "symlink":
        if not entry.linkname or "\x00" in entry.linkname:
            raise InputError(f"{entry.path}: symlink has an empty or invalid target; give its link target")
        if len(entry.linkname.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
            raise InputError(f"{entry.path}: symlink target is longer than {MAX_PATH_BYTES} bytes")
    elif entry.size < 0:
        raise InputError(f"{entry.path}: negative size {entry.size}; give the file's size in bytes")
    elif entry.source is None:
        raise InputError(f"{entry.path}: file has no source; give its bytes or a callable opening a stream")


def in_memory_content(entry: ArchiveEntry) -> bytes | bytearray | memoryview | None:
    """The content of a file entry whose source is a buffer (checked against its size), else None."""
    if not isinstance(entry.source, (bytes, bytearray, memoryview)):
        return None
    if len(entry.source) != entry.size:
        raise InputError(
            f"{entry.path}: source has {len(entry.source)} bytes but size says {entry.size}; fix the size"
        )
    return entry.source


def open_source(entry: ArchiveEntry) -> BinaryIO:
    """Open the content stream of a file entry."""
    content = in_memory_content(entry)
    return entry.source() if content is None else io.BytesIO(content)


def read_exactly(stream: BinaryIO, count: int, entry: ArchiveEntry, remaining: int) -> bytes:
    """Read ``count`` bytes of ``entry``'s content (``remaining`` of which were still unread),
    retrying short reads from pipes and tar streams; raise InputError if the source ends."""
    data = stream.read(count)
    if len(data) == count:
        return data
    parts = [data]
    got = len(data)
    while got < count:
        more = stream.read(count - got)
        if not more:
            raise InputError(
                f"{entry.path}: source ended {remaining - got} bytes early (size says {entry.size}); "
                "fix the size or the source"
            )
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def iter_chunks(entry: ArchiveEntry) -> Iterator[bytes]:
    """Yield the content of a file entry in CHUNK_SIZE pieces, exactly ``size`` bytes in all."""
    remaining = entry.size
    with open_source(entry) as stream:
        while remaining:
            chunk = read_exactly(stream, min(CHUNK_SIZE, remaining), entry, remaining)
            remaining -= len(chunk)
            yield chunk


def read_content(entry: ArchiveEntry) -> bytes | bytearray | memoryview:
    """The whole content of a file entry, in one read (for small files)."""
    content = in_memory_content(entry)
    if content is not None:
        return content
    with entry.source() as stream:
        return read_exactly(stream, entry.size, entry, entry.size) if entry.size else b""


def new_compressor(level: int) -> zstandard.ZstdCompressor:
    """The pinned frame settings: one-shot ``compress()``, content size, no checksum."""
    return zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=False)


class ThreadCompressors(threading.local):
    """One compressor per thread, built when the thread first uses it.

    A ZstdCompressor must not be used by two threads at once, and a fresh one (built, and its
    context allocated on first use) costs about 12 us, a fifth of compressing a typical 5 KB
    source file. Reusing it gives the same bytes: every ``compress()`` is a one-shot call whose
    output depends only on its input and the settings.
    """

    def __init__(self, level: int):
        self.compressor = new_compressor(level)


def canonical_record(kind: int, mode: int, uid: int, gid: int, size: int, digest: bytes,
                     path: bytes, link: bytes) -> bytes:
    """The bytes of one member that the root hash covers."""
    return CANONICAL_RECORD.pack(kind, len(path), len(link), mode, uid, gid, size, digest) + path + link


@dataclass(frozen=True)
class Finished:
    """A member whose content is complete: what its index record needs besides the location."""

    entry: ArchiveEntry
    path: bytes  # UTF-8
    size: int  # of the content (a symlink's content is its target)
    digest: bytes


@dataclass(frozen=True)
class Packed:
    """One step of the output, in archive order: zstd frames to write, and the members they
    complete, each with the end of its content in ``data``. A member's content runs from the
    end of the previous member, so the frames of a large file can come in several steps."""

    data: bytes
    members: list[tuple[Finished, int]]


def sealed_content(entry: ArchiveEntry, path: bytes, compressor: zstandard.ZstdCompressor,
                   cipher: "CodeCipher") -> bytes:
    """The stored bytes of an encrypted member: its whole content as the frames a plain member
    would have (one per chunk), sealed (embedfs.codecrypt). Held whole: code files are small,
    and the reader decrypts a member at once."""
    content = memoryview(read_content(entry))
    frames = b"".join(compressor.compress(content[at:at + CHUNK_SIZE]) for at in range(0, len(content), CHUNK_SIZE))
    return cipher.seal(path, frames)


def pack_small_members(batch: list[tuple[ArchiveEntry, bytes]], compressors: ThreadCompressors,
                       cipher: "CodeCipher | None" = None) -> Packed:
    """Read, hash and compress a run of small files and symlinks (on a worker thread); seal the
    encrypted ones."""
    compressor = compressors.compressor
    frames: list[bytes] = []
    members: list[tuple[Finished, int]] = []
    end = 0
    for entry, path in batch:
        if entry.kind == "symlink":
            link = entry.linkname.encode("utf-8", "surrogateescape")
            members.append((Finished(entry, path, len(link), hashlib.sha256(link).digest()), end))
            continue
        if entry.encrypted:
            frames.append(sealed_content(entry, path, compressor, cipher))
            end += len(frames[-1])
            members.append((Finished(entry, path, entry.size, hashlib.sha256(frames[-1]).digest()), end))
            continue
        content = read_content(entry)
        if entry.size:  # empty files have no frame
            frames.append(compressor.compress(content))
            end += len(frames[-1])
        members.append((Finished(entry, path, entry.size, hashlib.sha256(content).digest()), end))
    # one write per run: many small writes would each wait for the GIL behind the workers
    return Packed(b"".join(frames), members)


def compress_piece(chunk: bytes, compressors: ThreadCompressors) -> Packed:
    """One chunk of a large file as a frame (on a worker thread); the file is not done yet."""
    return Packed(compressors.compressor.compress(chunk), [])


def is_large(entry: ArchiveEntry) -> bool:
    """A file of more than one chunk: streamed chunk by chunk rather than read whole (an
    encrypted file is always read whole: its nonce depends on all of it)."""
    return entry.kind == "file" and entry.size > CHUNK_SIZE and not entry.encrypted


def iter_batches(ordered: list[tuple[ArchiveEntry, bytes]]) -> Iterator[list[tuple[ArchiveEntry, bytes]]]:
    """Group members, in order, into runs of small members (files of at most one chunk, and
    symlinks) of up to BATCH_BYTES or BATCH_MEMBERS, and single large files."""
    batch: list[tuple[ArchiveEntry, bytes]] = []
    batch_bytes = 0
    for entry, path in ordered:
        if is_large(entry):
            if batch:
                yield batch
                batch, batch_bytes = [], 0
            yield [(entry, path)]
            continue
        batch.append((entry, path))
        batch_bytes += entry.size if entry.kind == "file" else 0
        if batch_bytes >= BATCH_BYTES or len(batch) >= BATCH_MEMBERS:
            yield batch
            batch, batch_bytes = [], 0
    if batch:
        yield batch


def pack(entries: Iterable[ArchiveEntry], out: BinaryIO, *, level: int = DEFAULT_LEVEL,
         code_key: bytes | None = None) -> PackResult:
    """Write an archive of ``entries`` (any order; written sorted by path) to ``out``.

    Content is read once, hashed and compressed on a small thread pool, and written in order, so
    the output is byte-identical for the same entries and level. Worker threads open and read
    the sources of small files (up to one chunk), several at a time: a callable ``source`` must
    therefore be safe to call, and its stream to read, from any thread while other sources are
    being read (independent file objects, or readers that use ``os.pread`` on a shared fd, are).
    Large files are read on the calling thread, one chunk at a time. At most PENDING_BYTES of
    uncompressed content is in flight, so memory stays at a few MiB whatever the file sizes.

    Entries marked ``encrypted`` are sealed under ``code_key`` (embedfs.codecrypt), read whole;
    the archive is then version 2 with FLAG_ENCRYPTED. Without encrypted entries the output is
    version 1 and ``code_key`` is unused.
    """
    ordered = sort_entries(entries)
    encrypted = any(entry.encrypted for entry, _ in ordered)
    if encrypted and code_key is None:
        raise InputError("some entries are marked encrypted but no code key was given; pass code_key")
    cipher = code_cipher(code_key) if encrypted else None
    written = 0

    def write(data: bytes) -> None:
        nonlocal written
        out.write(data)
        written += len(data)

    write(HEADER.pack(MAGIC, VERSION_ENCRYPTED if encrypted else VERSION, FLAG_ENCRYPTED if encrypted else 0,
                      CHUNK_SIZE))
    index = bytearray()
    root = hashlib.sha256(ROOT_DOMAIN)
    files: dict[str, str] = {}
    member_start = written

    def write_packed(packed: Packed) -> None:
        nonlocal member_start
        data_start = written
        write(packed.data)
        records = []  # the root hash takes a run's canonical records in one update
        for member, end in packed.members:
            entry = member.entry
            kind = KIND_ENCRYPTED_FILE if entry.encrypted else KIND_CODES[entry.kind]
            link = entry.linkname.encode("utf-8", "surrogateescape")
            data_end = data_start + end
            index.extend(INDEX_RECORD.pack(kind, len(member.path), len(link), entry.mode, entry.uid, entry.gid,
                                           member.size, member_start, data_end - member_start, member.digest))
            index.extend(member.path + link)
            records.append(canonical_record(kind, entry.mode, entry.uid, entry.gid, member.size, member.digest,
                                            member.path, link))
            files[entry.path] = member.digest.hex()
            member_start = data_end
        root.update(b"".join(records))

    compressors = ThreadCompressors(level)
    # (uncompressed bytes, a Packed or a future of one), in archive order
    pending: deque[tuple[int, Packed | concurrent.futures.Future[Packed]]] = deque()
    in_flight = 0

    def enqueue(weight: int, item: Packed | concurrent.futures.Future[Packed]) -> None:
        nonlocal in_flight
        pending.append((weight, item))
        in_flight += weight
        while pending and (in_flight > PENDING_BYTES or len(pending) > PENDING_SLOTS):
            drain_one()

    def drain_one() -> None:
        nonlocal in_flight
        weight, item = pending.popleft()
        in_flight -= weight
        write_packed(item if isinstance(item, Packed) else item.result())

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)))
    try:
        for batch in iter_batches(ordered):
            entry, path = batch[0]
            if not is_large(entry):
                weight = sum(e.size for e, _ in batch if e.kind == "file")
                enqueue(weight, pool.submit(pack_small_members, batch, compressors, cipher))
                continue
            # a large file: read and hash here, in order; compress its chunks on the pool
            hasher = hashlib.sha256()
            for chunk in iter_chunks(entry):
                hasher.update(chunk)
                enqueue(len(chunk), pool.submit(compress_piece, chunk, compressors))
            enqueue(0, Packed(b"", [(Finished(entry, path, entry.size, hasher.digest()), 0)]))
        while pending:
            drain_one()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    index_offset = written
    write(bytes(index))
    root_hash = root.digest()
    write(TRAILER.pack(TRAILER_MAGIC, index_offset, len(index), len(ordered), root_hash))
    return PackResult(root_hash=root_hash.hex(), file_count=len(ordered), size=written, files=files)


def code_cipher(code_key: bytes) -> "CodeCipher":
    from embedfs.codecrypt import CodeCipher

    return CodeCipher(code_key)


def sort_entries(entries: Iterable[ArchiveEntry]) -> list[tuple[ArchiveEntry, bytes]]:
    """Validate entries and sort them by the UTF-8 bytes of their path; refuse duplicates."""
    keyed = []
    for entry in entries:
        keyed.append((validate_path(entry.path), entry))
        validate_entry(entry)
    keyed.sort(key=lambda pair: pair[0])
    for (a, _), (b, _) in zip(keyed, keyed[1:]):
        if a == b:
            raise InputError(f"archive path {a.decode(errors='replace')!r} is given twice; keep one entry per path")
    return [(entry, path) for path, entry in keyed]


def directory_entries(src_dir: str | os.PathLike, *, keep_owner: bool = False) -> list[ArchiveEntry]:
    """Entries for every regular file and symlink under ``src_dir`` (directories are implied).

    Owners are normalised to 0:0 unless ``keep_owner``; other file types are refused.
    """
    root = Path(src_dir)
    if not root.is_dir():
        raise InputError(f"{root} is not a directory; give the directory to pack")
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames) + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            st = os.lstat(full)
            uid, gid = (st.st_uid, st.st_gid) if keep_owner else (0, 0)
            mode = stat_module.S_IMODE(st.st_mode)
            if stat_module.S_ISLNK(st.st_mode):
                entries.append(ArchiveEntry(rel, "symlink", mode, uid, gid, 0, linkname=os.readlink(full)))
            elif stat_module.S_ISREG(st.st_mode):
                entries.append(ArchiveEntry(rel, "file", mode, uid, gid, st.st_size,
                                            source=lambda full=full: open(full, "rb", buffering=0)))
            else:
                raise InputError(f"{full} is not a regular file or symlink; remove it or pack another directory")
    return entries


def pack_directory(src_dir: str | os.PathLike, out: BinaryIO, *, level: int = DEFAULT_LEVEL,
                   keep_owner: bool = False) -> PackResult:
    """Pack every regular file and symlink under ``src_dir`` into ``out``."""
    return pack(directory_entries(src_dir, keep_owner=keep_owner), out, level=level)


# ---------------------------------------------------------------------------------------------
# reading


class ByteSource:
    """Random access to a byte range of a file, a buffer or a stream."""

    def __init__(self, read_at: Callable[[int, int], bytes | memoryview], size: int,
                 close: Callable[[], None] = lambda: None):
        self.read_at = read_at
        self.size = size
        self.close = close


def byte_source(src: str | os.PathLike | BinaryIO | bytes | bytearray | memoryview,
                offset: int = 0, size: int | None = None) -> ByteSource:
    """A ByteSource over ``size`` bytes at ``offset`` of a path, an open file or a buffer."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        view = memoryview(src).cast("B")
        total = len(view)
        end = total if size is None else offset + size
        if offset < 0 or end > total:
            raise FormatError(f"archive range {offset}+{size} lies outside a {total}-byte buffer")
        view = view[offset:end]
        return ByteSource(lambda at, n: view[at:at + n], len(view))
    if isinstance(src, (str, os.PathLike)):
        try:
            fd = os.open(src, os.O_RDONLY)
        except OSError as exc:
            raise InputError(f"cannot open {src}: {exc.strerror}; check the path") from None
        total = os.fstat(fd).st_size
        close = lambda: os.close(fd)  # noqa: E731
    else:
        fd = src.fileno() if hasattr(src, "fileno") and _has_fileno(src) else None
        if fd is None:
            src.seek(0, os.SEEK_END)
            total = src.tell()

            lock = threading.Lock()

            def read_stream(at: int, n: int) -> bytes:
                with lock:  # verify reads on a thread pool
                    src.seek(offset + at)
                    return src.read(n)

            length = total - offset if size is None else size
            if offset < 0 or offset + length > total:
                raise FormatError(f"archive range {offset}+{length} lies outside a {total}-byte stream")
            return ByteSource(read_stream, length)
        total = os.fstat(fd).st_size
        close = lambda: None  # noqa: E731
    length = total - offset if size is None else size
    if offset < 0 or offset + length > total:
        close()
        raise FormatError(f"archive range {offset}+{length} lies outside the {total}-byte file; the file is truncated")
    return ByteSource(lambda at, n: os.pread(fd, n, offset + at), length, close)


def _has_fileno(stream: BinaryIO) -> bool:
    try:
        stream.fileno()
    except (OSError, io.UnsupportedOperation):
        return False
    return True


class ThreadDecompressors(threading.local):
    """One decompressor per thread, built when the thread first uses it.

    Like ``ThreadCompressors``: a ZstdDecompressor must not be used by two threads at once, and
    building one per file cost more than decompressing a typical small file. Every
    ``stream_reader`` starts a fresh decompression, so reuse does not change the output.
    """

    def __init__(self) -> None:
        self.decompressor = zstandard.ZstdDecompressor()


class RangeReader:
    """A file's zstd frames as a stream read a piece at a time (for ``stream_reader``)."""

    def __init__(self, archive: "Archive", member: Member):
        self.archive = archive
        self.member = member
        self.position = 0

    def read(self, count: int) -> bytes | memoryview:
        count = min(count, self.member.data_length - self.position)
        if count <= 0:
            return b""
        data = self.archive._read_exact(self.member.data_offset + self.position, count, self.member.path)
        self.position += count
        return data


def check_content(member: Member, length: int, sha256: str) -> None:
    """Raise IntegrityError if a file's content (``length`` bytes, hashing to ``sha256``) is not
    what the index records."""
    if length != member.size:
        raise IntegrityError(f"{member.path}: content is {length} bytes, index says {member.size}; the archive was modified",
                             path=member.path, check="file size")
    if sha256 != member.sha256:
        raise IntegrityError(f"{member.path}: content does not match its SHA-256; the archive was modified",
                             path=member.path, check="file sha256")


def zstd_frame_error(member: Member, exc: zstandard.ZstdError) -> IntegrityError:
    return IntegrityError(f"{member.path}: compressed content is corrupt ({exc}); the archive was modified",
                          path=member.path, check="zstd frame")


def is_streamed(member: Member) -> bool:
    """A file verified piece by piece rather than held whole: more than one chunk of content
    or of frames, or frames for an empty file (whose content ``read`` does not bound). An
    encrypted file is checked whole, as it is sealed."""
    if member.encrypted:
        return False
    return member.size > CHUNK_SIZE or member.data_length > CHUNK_SIZE or (member.size == 0 and member.data_length > 0)


def run_data_end(run: list[Member]) -> int:
    """Where the frames of a run of files end."""
    return max(m.data_offset + m.data_length for m in run)


def iter_verify_runs(files: list[Member]) -> Iterator[list[Member]]:
    """Group files, in index order, into runs whose frames lie back to back (one read each) of up
    to BATCH_BYTES of frames or BATCH_MEMBERS files, and single streamed files."""
    run: list[Member] = []
    run_bytes = 0
    run_end = 0
    for member in files:
        if is_streamed(member):
            if run:
                yield run
                run, run_bytes = [], 0
            yield [member]
            continue
        if run and member.data_length and member.data_offset != run_end:
            yield run
            run, run_bytes = [], 0
        if not run:
            run_end = member.data_offset
        run.append(member)
        run_bytes += member.data_length
        run_end = max(run_end, member.data_offset + member.data_length)
        if run_bytes >= BATCH_BYTES or len(run) >= BATCH_MEMBERS:
            yield run
            run, run_bytes = [], 0
    if run:
        yield run


class Archive:
    """Random-access reader: list, stat, read one file, verify everything.

    With ``code_key`` (keys.json "code_key") encrypted members are decrypted by ``read`` and
    ``verify``; without it ``read`` of one raises KeyRequiredError and ``verify`` checks its
    stored bytes against the recorded SHA-256 only (what the root hash and MRENCLAVE cover)."""

    def __init__(self, source: ByteSource, code_key: bytes | None = None):
        self.source = source
        self.version = VERSION
        self.cipher = code_cipher(code_key) if code_key is not None else None
        self.members: dict[str, Member] = {}
        self.root_hash = ""
        self.chunk_size = CHUNK_SIZE
        self._decompressors = ThreadDecompressors()
        try:
            self._load_index()
        except BaseException:
            source.close()
            raise

    @classmethod
    def open(cls, src: str | os.PathLike | BinaryIO | bytes | bytearray | memoryview, *,
             offset: int = 0, size: int | None = None, code_key: bytes | None = None) -> "Archive":
        """Open an archive held in a path, an open file or a buffer (optionally a byte range)."""
        return cls(byte_source(src, offset, size), code_key)

    def close(self) -> None:
        self.source.close()

    def __enter__(self) -> "Archive":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- index ----------------------------------------------------------------------------------

    def _read_exact(self, offset: int, length: int, what: str) -> bytes | memoryview:
        data = self.source.read_at(offset, length)
        if len(data) != length:
            raise FormatError(f"embedfs archive is truncated: {what} at {offset} is cut short; rebuild it")
        return data

    def _load_index(self) -> None:
        total = self.source.size
        if bytes(self.source.read_at(0, len(MAGIC))) != MAGIC:
            raise FormatError("input is not an embedfs archive (bad magic); give an archive built by 'embedfs pack'")
        if total < HEADER.size + TRAILER.size:
            raise FormatError(f"embedfs archive is truncated to {total} bytes; rebuild it with 'embedfs pack'")
        magic, version, flags, chunk_size = HEADER.unpack(self._read_exact(0, HEADER.size, "header"))
        if version not in (VERSION, VERSION_ENCRYPTED):
            raise FormatError(f"embedfs archive version {version} is not supported (this reader knows "
                              f"{VERSION} and {VERSION_ENCRYPTED}); upgrade embedfs")
        if version == VERSION_ENCRYPTED and flags & ~FLAG_ENCRYPTED:
            raise FormatError(f"embedfs archive has unknown flags 0x{flags:x}; upgrade embedfs")
        kinds = KIND_NAMES if version == VERSION else {**KIND_NAMES, KIND_ENCRYPTED_FILE: "file"}
        self.version = version
        self.chunk_size = chunk_size
        tmagic, index_offset, index_size, count, root = TRAILER.unpack(
            self._read_exact(total - TRAILER.size, TRAILER.size, "trailer"))
        if tmagic != TRAILER_MAGIC:
            raise FormatError("embedfs archive trailer is missing (bad trailer magic); the archive is truncated or damaged")
        if index_offset < HEADER.size or index_offset + index_size != total - TRAILER.size:
            raise FormatError("embedfs archive index lies outside the archive; the archive is damaged")
        index = bytes(self._read_exact(index_offset, index_size, "index"))
        self.root_hash = root.hex()
        computed = hashlib.sha256(ROOT_DOMAIN)
        pos = 0
        previous = b""
        for _ in range(count):
            if pos + INDEX_RECORD.size > len(index):
                raise FormatError("embedfs archive index is cut short; the archive is damaged")
            (kind, path_len, link_len, mode, uid, gid, size, data_offset, data_length,
             digest) = INDEX_RECORD.unpack_from(index, pos)
            pos += INDEX_RECORD.size
            path = index[pos:pos + path_len]
            link = index[pos + path_len:pos + path_len + link_len]
            pos += path_len + link_len
            if pos > len(index) or kind not in kinds:
                raise FormatError("embedfs archive index has a malformed record; the archive is damaged")
            if path <= previous:
                raise FormatError("embedfs archive index is not sorted by path; the archive is damaged")
            previous = path
            if data_offset < HEADER.size or data_offset + data_length > index_offset:
                raise FormatError(f"{path.decode(errors='replace')}: content lies outside the data area; the archive is damaged")
            computed.update(canonical_record(kind, mode, uid, gid, size, digest, path, link))
            name = path.decode("utf-8", "surrogateescape")
            self.members[name] = Member(name, kinds[kind], mode, uid, gid, size, digest.hex(),
                                        link.decode("utf-8", "surrogateescape"), data_offset, data_length,
                                        encrypted=kind == KIND_ENCRYPTED_FILE)
        if pos != len(index):
            raise FormatError("embedfs archive index has trailing bytes; the archive is damaged")
        if computed.digest() != root:
            raise IntegrityError("embedfs archive index does not match its root hash; the archive was modified",
                                 path=None, check="root hash")

    # -- queries --------------------------------------------------------------------------------

    def list(self) -> list[Member]:
        """All members, sorted by path."""
        return list(self.members.values())

    def stat(self, path: str) -> Member:
        """The index record of one member."""
        member = self.members.get(path.lstrip("/"))
        if member is None:
            raise InputError(f"{path}: no such member in the archive; 'embedfs ls' lists them")
        return member

    def read(self, path: str) -> bytes:
        """The content of one file (or a symlink's target), checked against its SHA-256."""
        member = self.stat(path)
        if member.kind == "symlink":
            return member.linkname.encode("utf-8", "surrogateescape")
        raw = self._read_exact(member.data_offset, member.data_length, member.path) if member.data_length else b""
        return self._checked(member, raw)

    @property
    def encrypted(self) -> list[Member]:
        """The encrypted members, in path order."""
        return [m for m in self.members.values() if m.encrypted]

    def _checked(self, member: Member, raw: bytes | memoryview) -> bytes:
        """A file's content from its zstd frames ``raw``, checked against its size and SHA-256."""
        if member.encrypted:
            return self._opened(member, raw)
        data = self._decompress_frames(member, raw) if member.data_length else b""
        check_content(member, len(data), hashlib.sha256(data).hexdigest())
        return data

    def _check_stored(self, member: Member, raw: bytes | memoryview) -> None:
        """An encrypted member's stored bytes against the recorded SHA-256 (no key needed)."""
        if hashlib.sha256(raw).hexdigest() != member.sha256:
            raise IntegrityError(f"{member.path}: encrypted content does not match its SHA-256; the archive was modified",
                                 path=member.path, check="file sha256")

    def _opened(self, member: Member, raw: bytes | memoryview) -> bytes:
        """An encrypted member's content: stored bytes checked, decrypted, decompressed and
        checked against the recorded size."""
        self._check_stored(member, raw)
        if self.cipher is None:
            raise KeyRequiredError(f"{member.path} is encrypted code; reading it needs the code key "
                                   "(the code_key of the keys file the conversion wrote)")
        frames = self.cipher.open(member.path, raw)
        data = self._decompress_frames(member, frames) if frames else b""
        if len(data) != member.size:
            raise IntegrityError(f"{member.path}: content is {len(data)} bytes, index says {member.size}; the archive "
                                 "was modified", path=member.path, check="file size")
        return data

    def _decompress_frames(self, member: Member, raw: bytes | memoryview) -> bytes:
        """The content of a file from its zstd frames ``raw``: at most one byte more than the
        index says (enough to tell that it is too long), all of it for an empty file."""
        reader = self._decompressors.decompressor.stream_reader(raw, read_across_frames=True)
        try:
            return reader.read(member.size + 1) if member.size else reader.read()
        except zstandard.ZstdError as exc:
            raise zstd_frame_error(member, exc) from None

    def verify(self) -> VerifyResult:
        """Check every member's content against its hash (the index was checked on open).

        Small files are checked on a thread pool in runs, each run's frames read at once; a
        large file is streamed, one piece at a time, so memory stays at a few MiB whatever the
        file sizes. The first failing file in path order is the one named, as when each file is
        read on its own.
        """
        files = [m for m in self.members.values() if m.kind == "file"]
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)))
        try:
            total = sum(pool.map(self._verify_run, iter_verify_runs(files)))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return VerifyResult(root_hash=self.root_hash, file_count=len(self.members), content_bytes=total)

    def _verify_run(self, run: list[Member]) -> int:
        """Check a run of files (on a worker thread); return their content bytes."""
        if len(run) == 1 and is_streamed(run[0]):
            self._verify_streamed(run[0])
            return run[0].size
        start = run[0].data_offset
        length = run_data_end(run) - start
        raw = self.source.read_at(start, length) if length else b""
        if len(raw) != length:  # cut short: read each file alone, to name the first that is
            for member in run:
                self.read(member.path)
            return sum(m.size for m in run)
        view = memoryview(raw)
        for member in run:
            at = member.data_offset - start
            stored = view[at:at + member.data_length]
            if member.encrypted and self.cipher is None:
                self._check_stored(member, stored)
            else:
                self._checked(member, stored)
        return sum(m.size for m in run)

    def _verify_streamed(self, member: Member) -> None:
        """Check one large file a piece at a time: the same checks as ``read`` without holding it."""
        frames = RangeReader(self, member)
        reader = self._decompressors.decompressor.stream_reader(frames, read_size=STREAM_PIECE,
                                                                read_across_frames=True)
        # as ``_decompress_frames``: at most one byte more than the index says, all for size 0
        limit = member.size + 1 if member.size else None
        hasher = hashlib.sha256()
        length = 0
        try:
            while limit is None or length < limit:
                piece = reader.read(STREAM_PIECE if limit is None else min(STREAM_PIECE, limit - length))
                if not piece:
                    break
                hasher.update(piece)
                length += len(piece)
        except zstandard.ZstdError as exc:
            raise zstd_frame_error(member, exc) from None
        check_content(member, length, hasher.hexdigest())

    def extract(self, dest: str | os.PathLike) -> int:
        """Write every member below ``dest`` (which must be empty or absent); return the count."""
        root = Path(dest)
        root.mkdir(parents=True, exist_ok=True)
        if any(root.iterdir()):
            raise InputError(f"{root} is not empty; extract into a new directory")
        for member in self.members.values():
            target = root / member.path
            target.parent.mkdir(parents=True, exist_ok=True)
            if member.kind == "symlink":
                os.symlink(member.linkname, target)
            else:
                target.write_bytes(self.read(member.path))
                os.chmod(target, member.mode)
        return len(self.members)
