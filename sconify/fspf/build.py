"""Building an fspf: regions, protecting files one stream at a time, saving and encrypting."""

from __future__ import annotations

import hmac
import os
import stat
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

from sconify.atomic import atomic_file
from sconify.fspf import format as fmt
from sconify.fspf.chunks import ChunkCipher
from sconify.fspf.errors import FspfError
from sconify.fspf.format import FileRecord, Region

RandomSource = Callable[[int], bytes]


@dataclass(frozen=True)
class AddResult:
    """What `add_directory` (addf) did."""

    files: int
    bytes: int
    skipped: tuple[str, ...]  # paths left out: in another region, or not a regular file


class Fspf:
    """An fspf being built or changed, in memory. Keys come from `random` (default os.urandom)."""

    def __init__(
        self,
        regions: list[Region] | None = None,
        files: list[FileRecord] | None = None,
        *,
        random: RandomSource = os.urandom,
    ) -> None:
        self._regions = {r.path: r for r in regions or []}
        self._files = {f.path: f for f in files or []}
        self._random = random

    @classmethod
    def create(cls, *, random: RandomSource = os.urandom) -> Fspf:
        """An empty fspf without regions."""
        return cls(random=random)

    @classmethod
    def load(
        cls,
        source: str | os.PathLike | bytes,
        key: bytes | None = None,
        tag: bytes | None = None,
        *,
        random: RandomSource = os.urandom,
    ) -> Fspf:
        """Read a plaintext fspf, or an encrypted one with its key; check `tag` if given."""
        data = read_fspf_bytes(source)
        check_tag(data, tag)
        regions, files = fmt.decode_body(fmt.open_envelope(data, key))
        return cls(regions, files, random=random)

    @property
    def regions(self) -> tuple[Region, ...]:
        return tuple(self._regions[p] for p in sorted(self._regions, key=fmt.path_bytes))

    @property
    def files(self) -> tuple[FileRecord, ...]:
        return tuple(self._files[p] for p in sorted(self._files, key=fmt.path_bytes))

    def file(self, path: str) -> FileRecord | None:
        return self._files.get(fmt.normalise_path(path))

    def add_region(
        self,
        path: str,
        kind: str = "kernel",
        protection: str = "not-protected",
        *,
        kernel_path: str | None = None,
        key_length: int = 32,
        chunk_size: int | None = None,
    ) -> Region:
        """Add a region; a file belongs to the region with the longest matching path prefix."""
        path = fmt.normalise_path(path, "region path")
        if kind not in fmt.KINDS:
            raise FspfError(f"region kind {kind!r} is unknown; use 'kernel' or 'ephemeral'")
        if protection not in fmt.PROTECTIONS:
            raise FspfError(
                f"protection {protection!r} is unknown; use not-protected, authenticated or encrypted"
            )
        if kind == "kernel":
            kernel_path = fmt.normalise_path(kernel_path or path, "kernel path")
        elif kernel_path is not None:
            raise FspfError(f"region {path} is ephemeral and has no kernel path; drop --kernel")
        fmt.check_key_length(key_length)
        chunk_size = fmt.DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size
        fmt.check_chunk_size(chunk_size)
        if path in self._regions:
            raise FspfError(f"region {path} already exists; regions cannot be added twice")
        if self._regions and "/" not in self._regions and path != "/":
            raise FspfError(f"cannot add region {path}: add region / first, it is required once there is more than one region")
        claimed = [f.path for f in self._files.values() if _inside(f.path, path)]
        if claimed:
            raise FspfError(
                f"region {path} would take over {len(claimed)} already added file(s) such as {claimed[0]}; "
                "add regions before adding files"
            )
        region = Region(path, kind, protection, kernel_path, key_length, chunk_size)
        self._regions[path] = region
        return region

    def region_for(self, path: str) -> Region | None:
        """The region with the longest path prefix of `path`, or None."""
        path = fmt.normalise_path(path)
        best = None
        for region in self._regions.values():
            if _inside(path, region.path) and (best is None or len(region.path) > len(best.path)):
                best = region
        return best

    def stored_size(self, path: str, plain_size: int) -> int:
        """Bytes `protect_file` writes (encrypted) or keeps (otherwise) for a file of this size."""
        region = self._protected_region(path)
        return fmt.stored_size(plain_size, region.chunk_size, region.protection)

    def protect_file(self, path: str, src: BinaryIO, size: int, dst: BinaryIO | None = None) -> FileRecord:
        """Record one file read from `src` (exactly `size` bytes).

        Encrypted region: writes exactly stored_size(path, size) bytes of ciphertext to `dst`.
        Authenticated region: records one tag per chunk; `dst` may be None.
        """
        path = fmt.normalise_path(path, "file path")
        region = self._protected_region(path)
        if path in self._files:
            raise FspfError(f"file {path} is already in the fspf; each file is added once")
        if region.protection == "encrypted" and dst is None:
            raise FspfError(f"file {path} is in encrypted region {region.path}: pass an output for its ciphertext")
        record = protect_stream(
            path, src, size, dst, region, self._random(region.key_length), self._random(16)
        )
        self._files[path] = record
        return record

    def add_directory(
        self,
        region_path: str,
        src_dir: str | os.PathLike,
        out_dir: str | os.PathLike | None = None,
        *,
        workers: int | None = None,
    ) -> AddResult:
        """addf: record the regular files of `src_dir` that belong to `region_path`.

        A file src_dir/REL has the fspf path region_path/REL. Encrypted regions write the
        ciphertext to out_dir/REL (required). Files are processed by `workers` threads (file
        I/O overlaps encryption). On failure the fspf and out_dir are unchanged.
        """
        region_path = fmt.normalise_path(region_path, "region path")
        region = self._regions.get(region_path)
        if region is None:
            raise FspfError(f"region {region_path} does not exist; add it first with `fspf addr`")
        _require_recordable(region, f"region {region_path}")
        src = Path(src_dir)
        if not src.is_dir():
            raise FspfError(f"source directory {src} does not exist; pass the directory holding the region's files")
        out = None
        if region.protection == "encrypted":
            if out_dir is None:
                raise FspfError(f"region {region_path} is encrypted: pass OUT_DIR for the encrypted files")
            out = Path(out_dir)
            if _same_or_inside(out, src):
                raise FspfError(f"output directory {out} is inside the source {src}; pick an output outside it so the input stays unchanged")
        jobs, skipped = [], []
        for rel in _walk_files(src, skipped):
            path = fmt.normalise_path(f"{region_path}/{rel}")
            if self.region_for(path) != region:
                skipped.append(path)
            elif path in self._files:
                raise FspfError(f"file {path} is already in the fspf; each file is added once")
            else:  # keys drawn here, in path order, so a seeded key source gives the same fspf
                target = None if out is None else out / rel
                jobs.append((path, src / rel, target, self._random(region.key_length), self._random(16)))
        records = _protect_files(jobs, region, workers or min(4, os.cpu_count() or 1))
        self._files.update((r.path, r) for r in records)
        return AddResult(len(records), sum(r.size for r in records), tuple(skipped))

    def to_bytes(self) -> bytes:
        """The plaintext fspf file."""
        return fmt.seal_plain(fmt.encode_body(list(self.regions), list(self.files)))

    @property
    def tag(self) -> bytes:
        """The AES-GCM tag of the plaintext fspf (what `save` prints)."""
        return self.to_bytes()[-fmt.TAG_SIZE :]

    def save(self, path: str | os.PathLike) -> bytes:
        """Write the plaintext fspf atomically; return its tag."""
        data = self.to_bytes()
        with atomic_file(path, 0o644) as handle:
            handle.write(data)
        return data[-fmt.TAG_SIZE :]

    def encrypt_bytes(self, key: bytes | None = None) -> tuple[bytes, bytes, bytes]:
        """(encrypted fspf, key, tag); a fresh random key unless one is given."""
        key = self._random(fmt.FSPF_KEY_SIZE) if key is None else key
        if len(key) != fmt.FSPF_KEY_SIZE:
            raise FspfError(f"the fspf key must be {fmt.FSPF_KEY_SIZE} bytes")
        body = fmt.encode_body(list(self.regions), list(self.files))
        data = fmt.seal_encrypted(body, key, self._random(fmt.NONCE_SIZE))
        return data, key, data[-fmt.TAG_SIZE :]

    def encrypt_to(self, target: str | os.PathLike | BinaryIO, key: bytes | None = None) -> tuple[bytes, bytes]:
        """Write the fspf encrypted with a fresh random key; return (key, tag)."""
        data, key, tag = self.encrypt_bytes(key)
        if hasattr(target, "write"):
            target.write(data)
        else:
            with atomic_file(target, 0o644) as handle:
                handle.write(data)
        return key, tag

    def _protected_region(self, path: str) -> Region:
        return _require_recordable(self.region_for(path), path)


def protect_stream(
    path: str,
    src: BinaryIO,
    size: int,
    dst: BinaryIO | None,
    region: Region,
    key: bytes,
    file_id: bytes,
) -> FileRecord:
    """Read `size` bytes chunk by chunk; seal to `dst` (encrypted) or collect tags (authenticated).

    Chunks go through two reused buffers, so a file costs no allocation per chunk.
    """
    cipher = ChunkCipher(key, file_id, path)
    chunk_size = region.chunk_size
    count = fmt.chunk_count(size, chunk_size)
    encrypted = region.protection == "encrypted"
    offset = 0 if encrypted else cipher.aad_size
    buffer = memoryview(bytearray(offset + min(size, chunk_size)))
    sealed = memoryview(bytearray(min(size, chunk_size) + fmt.TAG_SIZE)) if encrypted else None
    tags = []
    for index in range(count):
        want = min(chunk_size, size - index * chunk_size)
        got = _fill(src, buffer[offset : offset + want])
        if got != want:
            raise FspfError(
                f"{path}: the input ended after {index * chunk_size + got} of {size} bytes; "
                "the file changed while it was read, retry"
            )
        final = index == count - 1
        if encrypted:
            out = sealed[: want + fmt.TAG_SIZE]
            cipher.seal_into(index, final, buffer[:want], out)
            dst.write(out)
        else:
            tags.append(cipher.mac_in_place(index, final, buffer[: offset + want]))
    return FileRecord(path, size, region.protection, chunk_size, file_id, key, tuple(tags))


def _fill(src: BinaryIO, view: memoryview) -> int:
    """Read into `view` until it is full or the input ends; return the bytes read."""
    filled = 0
    readinto = getattr(src, "readinto", None)
    while filled < len(view):
        if readinto is not None:
            n = readinto(view[filled:]) or 0
        else:
            data = src.read(len(view) - filled)
            n = len(data)
            view[filled : filled + n] = data
        if n == 0:
            break
        filled += n
    return filled


def read_fspf_bytes(source: str | os.PathLike | bytes | BinaryIO) -> bytes:
    """The bytes of an fspf given as a path, bytes or a binary file object."""
    if isinstance(source, bytes):
        return source
    if hasattr(source, "read"):
        return source.read()
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise FspfError(f"cannot read fspf {source}: {exc.strerror}; check the path") from None


def check_tag(data: bytes, expected: bytes | None) -> None:
    """Refuse an fspf whose tag differs from the expected one (older or different fspf)."""
    if expected is None:
        return
    actual = fmt.tag_of(data)
    if not hmac.compare_digest(actual, expected):
        raise FspfError(
            f"fspf tag is {actual.hex()} but {expected.hex()} was expected: this fspf is older (rolled back) "
            "or different from the trusted one; use the fspf that `fspf encrypt` printed this tag for"
        )


def _walk_files(root: Path, skipped: list[str]) -> list[str]:
    """Relative paths of the regular files below root, sorted; symlinks and others go to skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in dirnames:
            if os.path.islink(os.path.join(dirpath, name)):
                skipped.append(os.path.relpath(os.path.join(dirpath, name), root))
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            if os.path.islink(full) or not os.path.isfile(full):
                skipped.append(rel)
            else:
                found.append(rel)
    return sorted(found)


def _inside(path: str, prefix: str) -> bool:
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


def _same_or_inside(path: Path, parent: Path) -> bool:
    path, parent = path.resolve(), parent.resolve()
    return path == parent or parent in path.parents


def _protect_files(jobs: list[tuple], region: Region, workers: int) -> list[FileRecord]:
    """Protect files from disk in parallel; on any failure remove every output written."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_protect_path, region, *job) for job in jobs]
        wait(futures)
    failed = [f.exception() for f in futures if f.exception() is not None]
    if failed:
        _remove([job[2] for job, f in zip(jobs, futures) if job[2] is not None and f.exception() is None])
        exc = failed[0]
        if isinstance(exc, OSError):
            raise FspfError(f"cannot read or write {exc.filename}: {exc.strerror}; check the path and its permissions") from None
        raise exc
    return [f.result() for f in futures]


def _protect_path(region: Region, path: str, source: Path, target: Path | None, key: bytes, file_id: bytes) -> FileRecord:
    """Protect one file from disk; an encrypted one is written atomically to target."""
    with open(source, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if target is None:
            return protect_stream(path, handle, size, None, region, key, file_id)
        with atomic_file(target, stat.S_IMODE(os.fstat(handle.fileno()).st_mode)) as dst:
            return protect_stream(path, handle, size, dst, region, key, file_id)


def _require_recordable(region: Region | None, what: str) -> Region:
    """The region, if files in it are recorded (a protected kernel region)."""
    if region is None:
        raise FspfError(f"{what} is in no region; add a region covering it (at least /) first")
    if region.protection == "not-protected":
        raise FspfError(f"{what} belongs to not-protected region {region.path}, whose files are not recorded; use an authenticated or encrypted region")
    if region.kind == "ephemeral":
        raise FspfError(f"{what} belongs to ephemeral region {region.path}, which starts empty at run time; use a kernel region")
    return region


def _remove(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
