"""The merged filesystem of an image, read from the layer tar streams, never extracted.

Layers are applied in order as overlayfs would: ``.wh.NAME`` removes NAME from lower layers,
``.wh..wh..opq`` hides a directory's lower contents. Paths are normalised relative to the
root; symlinks resolve the way a chroot would, so nothing ever points outside the image.
The layers come from strangers: names with ``..`` are rejected, absolute names made relative,
device nodes and FIFOs skipped, hardlinks must point at an existing regular file, and entry
counts, name lengths and sizes are bounded by ``RootFSLimits``.
"""

from __future__ import annotations

import collections
import io
import os
import tarfile
import tempfile
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import BinaryIO

from sconify.errors import ImageError
from sconify.image import layers as L
from sconify.image.layerread import BackgroundTar, BlobCopy
from sconify.image.model import BoundedReader, Image, Layer, punch_pages
from sconify.image.tarbounds import BoundedTarInfo, HostileHeader

WHITEOUT_PREFIX = ".wh."
# tar member types as the merge names them (tarfile's isreg/isdir/... in one lookup)
MEMBER_KINDS = {
    **dict.fromkeys(tarfile.REGULAR_TYPES, "file"),
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
    tarfile.CHRTYPE: "device",
    tarfile.BLKTYPE: "device",
    tarfile.FIFOTYPE: "fifo",
}
OPAQUE_MARKER = ".wh..wh..opq"


class PathNotFound(ImageError):
    """A path does not exist in the image (or a component of it is not a directory)."""


@dataclass(frozen=True)
class RootFSLimits:
    """Bounds that keep a hostile image from exhausting memory or time."""

    max_entries: int = 300_000  # tar members over all layers (big real images: ~100k)
    max_names_size: int = 32 << 20  # bytes of member names and link targets over all layers
    max_path_length: int = 4096  # bytes of a normalised path, like PATH_MAX
    max_name_length: int = 255  # bytes of one path component, like NAME_MAX
    max_total_size: int = 64 << 30  # file bytes over all layers
    max_symlink_hops: int = 40  # like Linux's MAXSYMLINKS
    max_depth: int = 128  # components of one member name (deep node_modules: ~60)
    max_resolve_steps: int = 4096  # path components one symlink resolution may visit


@dataclass(frozen=True, slots=True)
class Member:
    """What the merge keeps of one tar header."""

    parts: tuple[str, ...]  # normalised name components
    kind: str  # "file" | "dir" | "symlink" | "hardlink" | "device" | "fifo"
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    linkname: str
    offset_data: int


@dataclass(frozen=True, slots=True)
class Entry:
    """One path of the merged view."""

    path: str  # normalised, relative to the root, no leading "/"
    kind: str  # "file" | "dir" | "symlink" | "hardlink"
    mode: int  # permission bits, incl. setuid/setgid/sticky
    uid: int
    gid: int
    size: int  # bytes of content (files and hardlinks)
    mtime: int
    linkname: str = ""  # symlink target as stored, or the normalised hardlink target
    layer_index: int = -1  # the layer that put this entry here (-1: implied directory)
    data_layer: int = -1  # the layer whose tar holds the content
    data_offset: int = -1  # offset of the content in that uncompressed tar

    @property
    def is_regular(self) -> bool:
        return self.kind in ("file", "hardlink")


@dataclass(frozen=True, slots=True)
class Placed:
    """A regular file or hardlink member of one layer, where the merge put it when that layer
    was applied (kept even once an upper layer hides it: its bytes stay in the blob)."""

    offset_data: int  # identifies the member in its layer's tar
    path: str  # resolved through the image's symlinks as they were at that layer
    kind: str  # "file" | "hardlink"
    target: str  # a hardlink's resolved target path ("" for a file)
    data_layer: int  # the layer whose tar holds the content
    data_offset: int
    size: int


def _padded(offset: int) -> int:
    """The end of a tar member's data padded to the next block."""
    return -(-offset // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def split_member_name(name: str, limits: RootFSLimits, what: str) -> list[str]:
    """A tar member name as path components: leading ``/`` and ``.`` dropped, ``..`` refused."""
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ImageError(f"{what}: member name {name[:200]!r} contains '..'; the layer is hostile or corrupt, refusing it")
    size = len(name.encode(errors="surrogateescape"))
    if size > limits.max_path_length:
        raise ImageError(f"{what}: a member name is longer than {limits.max_path_length} bytes; refusing the layer")
    if len(parts) > limits.max_depth:
        raise ImageError(f"{what}: member name {name[:100]!r} has more than {limits.max_depth} path components; refusing the layer")
    if size <= limits.max_name_length:
        return parts  # no component can be longer than the whole name
    for part in parts:
        if len(part.encode(errors="surrogateescape")) > limits.max_name_length:
            raise ImageError(f"{what}: a member name component is longer than {limits.max_name_length} bytes; refusing the layer")
    return parts


class RootFS:
    """The merged view of an image's layers: ``entries`` maps normalised paths to Entry."""

    def __init__(self, image: Image, limits: RootFSLimits | None = None,
                 cache_layers: bool | Collection[int] = False, keep: Callable[[str], bool] | None = None,
                 diff_ids_known: Collection[int] = (), copy_streamed_blobs: bool = False) -> None:
        self.image = image
        self.limits = limits or RootFSLimits()
        # With this set, the index pass also writes each layer's tar to an unlinked temp file (on
        # a background thread) and file reads become preads of it instead of a second inflate.
        self.cache_layers = cache_layers
        # With this too, only the contents of regular files whose member path (as in the tar,
        # no leading "/") passes ``keep`` are written there; the others are read by a pass over
        # their layer if ever asked for.
        self._keep = keep
        # Layers whose diff_id the caller vouches for (computed before from a blob of the digest
        # the read checks): their inflated bytes are not hashed again.
        self._diff_ids_known = diff_ids_known
        # With this set, the stored blob of each layer that is not in a file (a registry's, the
        # engine's) is copied to a private temp file as it is read: ``read_layers`` then reads
        # those, so a writer does not download them a second time.
        self._copy_streamed = copy_streamed_blobs
        self._copies: dict[int, Layer] = {}
        self._layer_cache: dict[int, BinaryIO] = {}
        # Kept layers read in place: an uncompressed blob stored in a file is its own tar, so its
        # cache is that file, opened read-only (never written or punched), the tar at this offset.
        self._in_place: dict[int, int] = {}
        # layer -> data offsets of the files whose bytes its cached tar holds; None: all of them
        self._kept: dict[int, set[int] | None] = {}
        self.entries: dict[str, Entry] = {"": Entry("", "dir", 0o755, 0, 0, 0, 0)}
        self.children: dict[str, set[str]] = {"": set()}
        self.skipped: list[tuple[str, str]] = []  # (path, kind) of device nodes and FIFOs
        self.whiteouts: set[str] = set()  # paths a whiteout entry named, as written in the layer
        # layer -> its regular file and hardlink members as placed (see Placed): what a layer
        # holds, hidden or not, for the rewrite of protected entries and the plaintext audit
        self.placed: dict[int, list[Placed]] = collections.defaultdict(list)
        self._parents: dict[tuple[str, ...], str] = {}  # member parent -> resolved dir, until a removal
        self._member_count = 0
        self._names_size = 0
        self._total_size = 0

    @classmethod
    def from_image(
        cls, image: Image, limits: RootFSLimits | None = None, cache_layers: bool | Collection[int] = False,
        keep: Callable[[str], bool] | None = None, diff_ids_known: Collection[int] = (),
        copy_streamed_blobs: bool = False,
    ) -> "RootFS":
        """Index every layer once (headers only), applying whiteouts in layer order.

        ``cache_layers`` keeps the tar of every layer (True) or of the layers at these indexes
        in a temp file, for later reads by offset instead of a second inflate; ``keep`` limits
        that to the regular files whose member path it accepts (a guess of what will be read).
        ``diff_ids_known``: indexes of layers whose diff_id is known to belong to their blob
        digest (which is checked): their diff_id is not recomputed. ``copy_streamed_blobs``:
        see ``read_layers``."""
        fs = cls(image, limits, cache_layers, keep, diff_ids_known, copy_streamed_blobs)
        try:
            for index in range(len(image.layers)):
                fs._apply_layer(index)
        except BaseException:
            fs.close()
            raise
        return fs

    def read_layers(self) -> tuple[Layer, ...]:
        """The image's layers as read: each checked (blob digest and diff_id), so trusted, and
        with ``copy_streamed_blobs`` a streamed one backed by its local copy."""
        return tuple(self._copies.get(index, replace(layer, trusted=True))
                     for index, layer in enumerate(self.image.layers))

    def close(self) -> None:
        """Drop the cached layer tars (if any)."""
        for cache in self._layer_cache.values():
            cache.close()
        self._layer_cache.clear()
        self._in_place.clear()

    def __enter__(self) -> "RootFS":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- building ----------------------------------------------------------------------

    def _apply_layer(self, index: int) -> None:
        layer = self.image.layers[index]
        what = f"layer {index} ({layer.digest})"
        members = self._read_members(index, what)
        for member in members:
            parts = list(member.parts)
            if parts and parts[-1] == OPAQUE_MARKER:
                self._clear_lower_children(parts[:-1], index)
            elif parts and parts[-1].startswith(WHITEOUT_PREFIX):
                self._whiteout(parts[:-1] + [parts[-1][len(WHITEOUT_PREFIX):]])
        for member in members:
            if member.parts and member.parts[-1].startswith(WHITEOUT_PREFIX):
                continue
            self._add_member(member, index, what)

    def _read_members(self, index: int, what: str) -> list[Member]:
        """One compact record per tar member (TarInfo objects are dropped as soon as read).

        The layer is inflated and checked on a background thread (``BackgroundTar``) while
        tarfile's random-access mode parses the headers here, seeking over member data."""
        layer = self.image.layers[index]
        tee = None
        if self.cache_layers is True or (self.cache_layers and index in self.cache_layers):
            in_place = self._open_in_place(index, layer)
            if in_place is not None:
                layer = in_place  # read (and its digest checked) through the very file kept
            else:
                tee = tempfile.TemporaryFile(prefix="sconify-layer-")
                self._layer_cache[index] = tee
        keep = self._keep if tee is not None else None
        kept = self._kept[index] = set() if keep is not None else None
        copy = BlobCopy(layer) if self._copy_streamed and layer.file_range is None else None
        try:
            members = self._index_layer(layer, index, what, tee, keep, kept, copy)
        except BaseException:
            if copy is not None:
                copy.discard()
            raise
        if copy is not None:
            self._copies[index] = copy.layer()
        return members

    def _index_layer(self, layer: Layer, index: int, what: str, tee, keep, kept, copy) -> list[Member]:
        members: list[Member] = []
        with BackgroundTar(layer, tee.fileno() if tee else None, selective=keep is not None,
                           check_diff_id=index not in self._diff_ids_known,
                           blob_fd=copy.fd if copy is not None else None) as stream:
            try:
                with tarfile.open(fileobj=stream, mode="r:", tarinfo=BoundedTarInfo) as archive:
                    for info in archive:
                        archive.members.clear()  # tarfile keeps every TarInfo otherwise
                        member = self._member(info, what)
                        members.append(member)
                        if keep is not None and member.kind == "file" and member.size and keep("/".join(member.parts)):
                            kept.add(member.offset_data)  # its data follows: not read past yet
                            stream.keep(member.offset_data, member.size)
            except HostileHeader as exc:
                raise ImageError(f"{what}: {exc}") from None
            except tarfile.TarError as exc:
                stream.finish()  # a corrupt blob explains a broken tar better than tarfile can
                raise ImageError(f"{what} is not a valid tar ({exc}); the image is corrupt, re-create it") from None
            stream.finish()  # reach the end so the blob digest and diff_id are checked
        return members

    def _open_in_place(self, index: int, layer: Layer) -> Layer | None:
        """For an uncompressed blob stored in a file (an OCI layout's blob, a docker-archive's
        layer tar): keep that file open as the layer's cache instead of writing a copy of the
        tar (a data layer of ciphertext, a docker-archive's layers: no byte written, no fresh
        page taken), and return the layer read through that descriptor, so the bytes the index
        pass checks against the digest are the bytes later reads get. None for any other layer.
        As with every file-backed input, the file must not change while sconify reads it."""
        where = layer.file_range
        if layer.compression != "none" or where is None:
            return None
        try:
            cache = open(where.path, "rb", buffering=0)  # noqa: SIM115 - closed by close()
        except OSError:
            return None  # the read reports a missing blob in its own words
        self._layer_cache[index] = cache
        self._in_place[index] = where.offset
        fd, offset, size = cache.fileno(), where.offset, where.size
        return replace(layer, opener=lambda: io.BufferedReader(BoundedReader(fd, offset, size), L.CHUNK_SIZE))

    def _member(self, info: tarfile.TarInfo, what: str) -> Member:
        """Check one tar header against the limits and keep what the merge needs."""
        self._member_count += 1
        if self._member_count > self.limits.max_entries:
            raise ImageError(
                f"the image has more than {self.limits.max_entries} layer entries; refusing it - "
                "if the image is trusted, raise --max-entries (RootFSLimits.max_entries, see docs/security.md)"
            )
        self._names_size += len(info.name) + len(info.linkname)
        if self._names_size > self.limits.max_names_size:
            raise ImageError(
                f"the image's member names take more than {self.limits.max_names_size} bytes; refusing it - "
                "if the image is trusted, raise RootFSLimits.max_names_size (see docs/security.md)"
            )
        if info.size < 0:
            raise ImageError(f"{what}: member {info.name[:200]!r} has a negative size; the layer is hostile or corrupt, refusing it")
        kind = MEMBER_KINDS.get(info.type)
        if kind == "file":
            self._total_size += info.size
            if self._total_size > self.limits.max_total_size:
                raise ImageError(
                    f"the image holds more than {self.limits.max_total_size} bytes of files; refusing it - "
                    "if the image is trusted, raise RootFSLimits.max_total_size (see docs/security.md)"
                )
        parts = tuple(split_member_name(info.name, self.limits, what))
        if kind is None:
            raise ImageError(f"{what}: member {info.name[:200]!r} has unsupported tar type {info.type!r}; re-create the layer")
        if kind in ("symlink", "hardlink") and len(info.linkname.encode(errors="surrogateescape")) > self.limits.max_path_length:
            raise ImageError(
                f"{what}: link {info.name[:200]!r} has a target longer than {self.limits.max_path_length} bytes; refusing the layer"
            )
        return Member(parts, kind, info.mode & 0o7777, info.uid, info.gid, info.size if kind == "file" else 0,
                      int(info.mtime), info.linkname, info.offset_data)

    def _add_member(self, member: Member, index: int, what: str) -> None:
        parts = list(member.parts)
        if not parts:
            return  # the root directory itself
        if member.kind in ("device", "fifo"):
            self.skipped.append(("/".join(parts), member.kind))
            return
        parent = self._make_parent(parts[:-1], index, what)
        path = f"{parent}/{parts[-1]}" if parent else parts[-1]
        common = dict(mode=member.mode, uid=member.uid, gid=member.gid, mtime=member.mtime, layer_index=index)
        if member.kind == "dir":
            entry = Entry(path, "dir", size=0, **common)
        elif member.kind == "symlink":
            entry = Entry(path, "symlink", size=0, linkname=member.linkname, **common)
        elif member.kind == "hardlink":
            target = self._hardlink_target(member.linkname, what, path)
            entry = Entry(path, "hardlink", size=target.size, linkname=target.path,
                          data_layer=target.data_layer, data_offset=target.data_offset, **common)
        else:
            entry = Entry(path, "file", size=member.size, data_layer=index, data_offset=member.offset_data, **common)
        if entry.is_regular:
            self.placed[index].append(Placed(member.offset_data, path, entry.kind,
                                             entry.linkname if entry.kind == "hardlink" else "",
                                             entry.data_layer, entry.data_offset, entry.size))
        self._put(entry)

    def _put(self, entry: Entry) -> None:
        old = self.entries.get(entry.path)
        if old is not None and not (old.kind == "dir" and entry.kind == "dir"):
            self._remove(entry.path)
        self.entries[entry.path] = entry
        parent, _, name = entry.path.rpartition("/")
        self.children[parent].add(name)
        if entry.kind == "dir":
            self.children.setdefault(entry.path, set())

    def _make_parent(self, parts: list[str], index: int, what: str) -> str:
        """The resolved directory for ``parts``, creating implied directories; chroot-confined."""
        key = tuple(parts)
        resolved = self._parents.get(key)
        if resolved is None:
            resolved = self._parents[key] = self._walk_parent(parts, index, what)
        return resolved

    def _walk_parent(self, parts: list[str], index: int, what: str) -> str:
        current = ""
        for part in parts:
            candidate = f"{current}/{part}" if current else part
            entry = self.entries.get(candidate)
            if entry is None:
                self._put(Entry(candidate, "dir", 0o755, 0, 0, 0, 0, layer_index=index))
                current = candidate
            elif entry.kind == "dir":
                current = candidate
            elif entry.kind == "symlink":
                try:
                    current = self.resolve(candidate)
                except PathNotFound:
                    raise ImageError(f"{what}: an entry lies below dangling symlink {candidate!r}; the layer is corrupt, re-create it") from None
                except ImageError as exc:
                    raise ImageError(f"{what}: an entry lies below symlink {candidate!r}, which does not resolve: {exc}, refusing the layer") from None
                if self.entries[current].kind != "dir":
                    raise ImageError(f"{what}: an entry lies below {candidate!r}, which is not a directory; re-create the layer")
            else:
                raise ImageError(f"{what}: an entry lies below {candidate!r}, which is not a directory; re-create the layer")
        return current

    def _hardlink_target(self, linkname: str, what: str, path: str) -> Entry:
        parts = split_member_name(linkname, self.limits, what)
        try:
            target_path = self.resolve("/".join(parts), follow_final=False)
        except PathNotFound:
            target_path = None
        target = self.entries.get(target_path) if target_path is not None else None
        if target is None or not target.is_regular:
            raise ImageError(
                f"{what}: hardlink {path!r} points to {linkname[:200]!r}, which is not a regular file "
                "in the image; the layer is hostile or corrupt, refusing it"
            )
        return target

    def _whiteout(self, parts: list[str]) -> None:
        self.whiteouts.add("/".join(parts))
        path = self._existing_parent(parts)
        if path is not None and path in self.entries:
            self._remove(path)

    def _clear_lower_children(self, parts: list[str], index: int) -> None:
        path = self._existing_parent(parts + ["x"])
        directory = path.rpartition("/")[0] if path is not None else None
        if directory is None or directory not in self.children:
            return
        for name in sorted(self.children[directory]):
            child = f"{directory}/{name}" if directory else name
            if self.entries[child].layer_index < index:
                self._remove(child)

    def _existing_parent(self, parts: list[str]) -> str | None:
        """The path of ``parts`` with its parent resolved, or None when the parent is missing."""
        if not parts:
            return None
        try:
            parent = self.resolve("/".join(parts[:-1])) if parts[:-1] else ""
        except PathNotFound:
            return None
        if self.entries[parent].kind != "dir":
            return None
        return f"{parent}/{parts[-1]}" if parent else parts[-1]

    def _remove(self, path: str) -> None:
        """Remove ``path`` and, for a directory, everything below it."""
        self._parents.clear()  # a resolved parent may have gone
        stack = [path]
        while stack:
            current = stack.pop()
            self.entries.pop(current, None)
            for name in self.children.pop(current, ()):
                stack.append(f"{current}/{name}" if current else name)
        parent, _, name = path.rpartition("/")
        self.children.get(parent, set()).discard(name)

    # --- queries -----------------------------------------------------------------------

    def resolve(self, path: str, follow_final: bool = True) -> str:
        """The normalised path ``path`` leads to, following symlinks as inside a chroot."""
        pending = collections.deque(path.split("/"))
        resolved: list[str] = []
        hops = steps = 0
        while pending:
            part = pending.popleft()
            steps += 1
            if steps > self.limits.max_resolve_steps:
                raise ImageError(
                    f"{path[:200]!r}: resolving it visits more than {self.limits.max_resolve_steps} path components; "
                    "fix the symlinks in the image"
                )
            if part in ("", "."):
                continue
            if part == "..":
                if resolved:
                    resolved.pop()
                continue
            candidate = "/".join([*resolved, part])
            entry = self.entries.get(candidate)
            if entry is None:
                raise PathNotFound(f"{path!r} does not exist in the image ({candidate!r} is missing); check the path")
            last = not any(p not in ("", ".") for p in pending)
            if entry.kind == "symlink" and (follow_final or not last):
                hops += 1
                if hops > self.limits.max_symlink_hops:
                    raise ImageError(f"{path!r}: too many levels of symbolic links (a loop?); fix the symlinks in the image")
                if entry.linkname.startswith("/"):
                    resolved = []
                pending.extendleft(reversed(entry.linkname.split("/")))
                continue
            if not last and entry.kind != "dir":
                raise PathNotFound(f"{path!r} does not exist in the image ({candidate!r} is not a directory); check the path")
            resolved.append(part)
        return "/".join(resolved)

    def exists(self, path: str) -> bool:
        try:
            self.resolve(path)
        except PathNotFound:
            return False
        return True

    def stat(self, path: str, follow_symlinks: bool = True) -> Entry:
        return self.entries[self.resolve(path, follow_final=follow_symlinks)]

    def listdir(self, path: str = "") -> list[str]:
        """Sorted names in the directory ``path`` (symlinks followed)."""
        resolved = self.resolve(path)
        if self.entries[resolved].kind != "dir":
            raise PathNotFound(f"{path!r} is not a directory in the image; check the path")
        return sorted(self.children.get(resolved, ()))

    def walk(self, top: str = "") -> Iterator[tuple[str, list[str], list[str]]]:
        """Like os.walk, top-down, sorted, not following symlinks: (dirpath, dirnames, filenames)."""
        start = self.resolve(top)
        stack = [start]
        while stack:
            directory = stack.pop()
            names = sorted(self.children.get(directory, ()))
            dirs = [n for n in names if self.entries[f"{directory}/{n}" if directory else n].kind == "dir"]
            files = [n for n in names if n not in set(dirs)]
            yield directory, dirs, files
            stack.extend(f"{directory}/{n}" if directory else n for n in reversed(dirs))

    def read(self, path: str) -> bytes:
        """The content of one regular file (symlinks followed)."""
        for _, stream in self.iter_files([path]):
            return stream.read()
        raise AssertionError("unreachable")

    def iter_files(self, paths: Iterable[str]) -> Iterator[tuple[Entry, BinaryIO]]:
        """(entry, content stream) for each path, reading each needed layer once, in layer order.

        Entries come in layer/offset order, not in the order asked. A stream is valid until
        the next item is taken.
        """
        wanted = []
        for path in paths:
            entry = self.entries[self.resolve(path)]
            if not entry.is_regular:
                raise ImageError(f"{path!r} is a {entry.kind} in the image, not a regular file; check the path")
            wanted.append(entry)
        wanted.sort(key=lambda e: (e.data_layer, e.data_offset, e.path))
        by_layer: dict[int, list[Entry]] = collections.defaultdict(list)
        for entry in wanted:
            by_layer[entry.data_layer].append(entry)
        for index in sorted(by_layer):
            yield from self._iter_layer(index, by_layer[index])

    def cached_content(self, path: str) -> tuple[int, int, int] | None:
        """``(fd, offset, size)`` of a regular file's bytes in a cached layer tar, or None when
        its layer is not cached. The fd stays open until ``close``; read it with ``os.pread``
        (thread-safe, unlike a shared file position)."""
        entry = self._regular(path)
        cache = self._cache_of(entry)
        return None if cache is None else (cache.fileno(), self._tar_offset(entry), entry.size)

    def release(self, paths: Iterable[str]) -> int:
        """The caller will not read these regular files' bytes again: punch the whole pages under
        them out of the cached layer tars now rather than when the RootFS closes. Their page
        cache is freed at once and the next writes reuse it, which costs a fraction of fresh
        pages (on these VMs 8x less). A released file that is asked for again is read by a pass
        over its layer, as if it had not been kept. Files next to each other in a tar (nothing
        but the second one's header between them) are punched as one range, with the pages they
        share. Layers read in place are the input's own files: they are left alone. The bytes
        punched."""
        ranges = self._cached_ranges(paths)
        for layer, start, _ in ranges:
            self._kept_offsets(layer).discard(start)
        punched = 0
        run_layer, run_start, run_end = -1, 0, 0
        for layer, start, end in ranges + [(-1, 0, 0)]:
            if layer == run_layer and start == _padded(run_end) + tarfile.BLOCKSIZE:
                run_end = end
                continue
            if run_layer >= 0:
                punched += punch_pages(self._layer_cache[run_layer].fileno(), run_start, run_end - run_start)
            run_layer, run_start, run_end = layer, start, end
        return punched

    def release_all_but(self, paths: Iterable[str]) -> int:
        """Release every cached file's bytes except those of ``paths`` (regular files): punch the
        gaps between what is left in each cached layer tar. This also frees the pages that
        ``release`` leaves, those shared by the ends of two files. Layers read in place are left
        alone, as by ``release``. The bytes punched."""
        live: dict[int, list[tuple[int, int]]] = {index: [] for index in self._punchable()}
        for layer, start, end in self._cached_ranges(paths):
            live[layer].append((start, end))
        punched = 0
        for index, ranges in live.items():
            fd = self._layer_cache[index].fileno()
            self._kept[index] = {start for start, _ in ranges}
            gap_start = 0
            for start, end in ranges + [(os.fstat(fd).st_size, 0)]:
                punched += punch_pages(fd, gap_start, start - gap_start)
                gap_start = max(gap_start, end)
        return punched

    def _punchable(self) -> list[int]:
        """The layers whose cache is a temp tar sconify wrote, the only ones a release punches
        (a layer read in place is the input's own file)."""
        return [index for index in self._layer_cache if index not in self._in_place]

    def _cached_ranges(self, paths: Iterable[str]) -> list[tuple[int, int, int]]:
        """Sorted ``(layer, start, end)`` of the bytes a punchable cached tar holds of these
        regular files."""
        punchable = set(self._punchable())
        ranges = []
        for path in paths:
            entry = self._regular(path)
            if entry.size and entry.data_layer in punchable and self._cache_of(entry) is not None:
                ranges.append((entry.data_layer, entry.data_offset, entry.data_offset + entry.size))
        return sorted(set(ranges))  # hard links share their target's range

    def _regular(self, path: str) -> Entry:
        entry = self.entries.get(path)  # keys are resolved paths: no walk needed for them
        if entry is None or entry.kind == "symlink":
            entry = self.entries[self.resolve(path)]
        if not entry.is_regular:
            raise ImageError(f"{path!r} is a {entry.kind} in the image, not a regular file; check the path")
        return entry

    def _kept_offsets(self, index: int) -> set[int]:
        """The data offsets of the files layer ``index``'s cached tar holds, as a set to change."""
        kept = self._kept.get(index)
        if kept is None:
            kept = self._kept[index] = {e.data_offset for e in self.entries.values()
                                        if e.is_regular and e.data_layer == index}
        return kept

    def _tar_offset(self, entry: Entry) -> int:
        """Where ``entry``'s bytes start in the file caching its layer."""
        return self._in_place.get(entry.data_layer, 0) + entry.data_offset

    def _cache_of(self, entry: Entry) -> BinaryIO | None:
        """The kept tar holding ``entry``'s content, or None (layer not kept, or file not kept)."""
        cache = self._layer_cache.get(entry.data_layer)
        kept = self._kept.get(entry.data_layer)
        if cache is None or (kept is not None and entry.size and entry.data_offset not in kept):
            return None
        return cache

    def _iter_layer(self, index: int, entries: list[Entry]) -> Iterator[tuple[Entry, BinaryIO]]:
        if index in self._layer_cache:  # inflated once by the index pass (and checked): read by offset
            streamed = []
            for entry in entries:
                cache = self._cache_of(entry)
                if cache is None:
                    streamed.append(entry)
                    continue
                window = BoundedReader(cache.fileno(), self._tar_offset(entry), entry.size)
                yield entry, io.BufferedReader(window, L.CHUNK_SIZE)  # type: ignore[misc]
            entries = streamed  # files the index pass did not keep: one pass over the layer
            if not entries:
                return
        layer = self._copies.get(index, self.image.layers[index])  # a local copy, if one was made
        stream = layer.open_tar()
        position = 0
        try:
            for entry in entries:
                if entry.data_offset < position:  # a second path to the same bytes: start over
                    stream.close()
                    stream, position = layer.open_tar(), 0
                _skip(stream, entry.data_offset - position, layer.digest)
                content = _Window(stream, entry.size, layer.digest)
                yield entry, io.BufferedReader(content, L.CHUNK_SIZE)  # type: ignore[misc]
                L.drain(content)
                position = entry.data_offset + entry.size
            L.drain(stream)  # reach the end so the diff_id is checked
        finally:
            stream.close()


def _skip(stream: BinaryIO, count: int, digest: str) -> None:
    while count > 0:
        data = stream.read(min(count, L.CHUNK_SIZE))
        if not data:
            raise ImageError(f"layer {digest} ended early; the image changed or is corrupt, re-read it")
        count -= len(data)


class _Window(io.RawIOBase):
    """The next ``size`` bytes of a stream."""

    def __init__(self, stream: BinaryIO, size: int, digest: str) -> None:
        super().__init__()
        self._stream = stream
        self._left = size
        self._digest = digest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        if self._left <= 0:
            return 0
        view = memoryview(buffer)
        data = self._stream.read(min(len(view), self._left))
        if not data:
            raise ImageError(f"layer {self._digest} ended early; the image changed or is corrupt, re-read it")
        n = len(data)
        view[:n] = data
        self._left -= n
        return n
