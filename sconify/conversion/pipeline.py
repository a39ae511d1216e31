"""sconify-image: the end-to-end conversion, one function per step of the data flow.

read image -> choose executable, code and data -> spool their bytes -> embedfs pack + inject ->
measure -> protect data (one fspf per volume, sconify.conversion.volumes) -> code layer + data layer ->
new config -> write image -> manifest, CAS session, keys file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Iterator, Protocol

from embedfs.archive import ArchiveEntry, PackResult, pack
from embedfs.elf import InjectResult, inject_with
from embedfs.measure import measure_elf
from sconify import __version__
from sconify.atomic import StagedFiles, existing_ancestor, writing
from sconify.conversion.codepaths import native_code
from sconify.conversion.elfworker import ElfWorker
from sconify.errors import EnvironmentProblem, UsageError
from sconify.hashing import sha256_file
from sconify.image.layerread import short_gil_switches
from sconify.image.layers import LayerLimits, copy_exactly
from sconify.image.layerwriter import LayerWriter
from sconify.image.model import Image, Layer, WriteResult, canonical_json
from sconify.image.mutate import append_layers, replace_layers, with_config
from sconify.image.oci import blob_name
from sconify.image.prefetch import BlobPrefetch, same_filesystem
from sconify.image.reference import parse_reference
from sconify.image.rewrite import rewrite_layers
from sconify.image.rootfs import RootFS, RootFSLimits
from sconify.image.transports import read_image, write_image
from sconify.outputs.keys import KeysFile, VolumeKeys, new_code_key, random_source
from sconify.conversion.libraries import candidate_libraries, library_closure
from sconify.outputs.manifest import (
    RuntimeFigures,
    LABEL_PREFIX,
    EmbedfsFigures,
    ExecutableFigures,
    ImageFigures,
    Manifest,
    MeasurementFigures,
)
from sconify.conversion.newlayers import TarEntry, source_date_epoch, whiteout_for, write_layer_tar
from sconify.conversion.sealed import embedded_packages, left_files, sealed_roots, shallow_roots
from sconify.conversion.runtime import (
    LAUNCHER_PATH,
    Policy,
    build_runtime,
    check_env_names,
    check_runtime_mode,
    policy_environment,
    runtime_config,
    runtime_layer,
    wrap_entrypoint,
)
from sconify.conversion.select import (
    Executable,
    absolute,
    command_of,
    env_of,
)
from sconify.outputs.session import SessionSpec, SessionVolume, check_session_name, volume_names, write_session
from sconify.conversion.spool import Extent, Spool
from sconify.conversion.plan import Plan, contents_to_keep, make_plan, plan_scripts
from sconify.conversion.volumes import SealedVolume, declare_volumes, is_volume, write_data_layer


@dataclass
class ConvertOptions:
    source: str
    destination: str
    recipe: str | None = None
    binary: str | None = None
    fs_dirs: list[str] = field(default_factory=list)
    fs_files: list[str] = field(default_factory=list)
    encrypted_code: list[str] = field(default_factory=list)  # --encrypted-code DIR: embedded encrypted
    encrypted_dirs: list[str] = field(default_factory=list)
    authenticated_dirs: list[str] = field(default_factory=list)
    heap_size: int | None = None
    stack_size: int | None = None
    threads: int | None = None
    session_name: str | None = None
    manifest_out: str = "manifest.json"
    session_out: str = "session.yaml"
    keys_out: str = "keys.json"
    keep_embedded: bool = False
    authenticate_root: bool = False
    inline_keys: bool = False
    deterministic_keys_from: str | None = None
    platform: str | None = None
    compression: str | None = None
    dry_run: bool = False
    max_layer_size: int | None = None  # LayerLimits bounds for untrusted input (docs/security.md)
    max_expansion: int | None = None
    max_entries: int | None = None  # RootFSLimits.max_entries
    force: bool = False  # overwrite an existing keys file
    strict: bool = False  # fail instead of warning when code may be missed (Plan.warnings)
    runtime: str = "sim"  # "sim": the runtime layer and ENTRYPOINT (docs/runtime.md); "none": neither
    allow_args: bool = False  # the host may append arguments to the recorded command (SCONE's @@1)
    allow_env: list[str] = field(default_factory=list)  # variables the host may set (docs/runtime.md)
    generic: bool = False  # no keys: volumes declared, each deployment brings its own (docs/deploy.md)
    public_initial_content: bool = False  # --generic: files under a volume are public initial content


class Reporter(Protocol):
    """What the pipeline tells its caller: phases, and progress within a phase."""

    def start(self, phase: str, total: int | None = None) -> None: ...

    def advance(self, amount: int = 1) -> None: ...

    def finish(self, phase: str, seconds: float) -> None: ...


class SilentReporter:
    def start(self, phase: str, total: int | None = None) -> None:
        pass

    def advance(self, amount: int = 1) -> None:
        pass

    def finish(self, phase: str, seconds: float) -> None:
        pass


@dataclass
class ConvertResult:
    plan: Plan
    manifest: Manifest | None = None
    phases: dict[str, float] = field(default_factory=dict)
    input_bytes: int = 0  # uncompressed size of the input layers
    embedded_files: int = 0
    embedded_bytes: int = 0
    encrypted_files: int = 0
    authenticated_files: int = 0
    removed_files: int = 0
    missing_libraries: list[str] = field(default_factory=list)  # DT_NEEDED sonames not in the image
    written: dict[str, str] = field(default_factory=dict)  # what -> path


@contextlib.contextmanager
def phase(
    reporter: Reporter, timings: dict[str, float], name: str, total: int | None = None
) -> Iterator[None]:
    reporter.start(name, total)
    began = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - began
    reporter.finish(name, timings[name])


def sconify_image(
    options: ConvertOptions, reporter: Reporter | None = None, elf: ElfWorker | None = None
) -> ConvertResult:
    """Convert ``options.source`` into a confidential image at ``options.destination``.

    ``elf``: a running lief helper to use (the CLI starts one before its own imports); by
    default one is started here and stopped at the end."""
    reporter = reporter or SilentReporter()
    timings: dict[str, float] = {}
    check_options(options)
    with contextlib.ExitStack() as cleanup:
        # lief loads in a helper process while the image is read (see sconify.conversion.elfworker).
        if elf is None and not options.dry_run:
            elf = cleanup.enter_context(ElfWorker())
        cleanup.enter_context(short_gil_switches())
        return convert(options, reporter, timings, elf)


def convert(options: ConvertOptions, reporter: Reporter, timings: dict[str, float], elf: ElfWorker | None
            ) -> ConvertResult:
    with phase(reporter, timings, "read image"):
        image = read_image(options.source, platform=options.platform, limits=layer_limits(options))
        fs = RootFS.from_image(image, rootfs_limits(options), cache_layers=not options.dry_run,
                               keep=contents_to_keep(image.config, options),
                               copy_streamed_blobs=not options.dry_run and needs_blob_copies(options))
        # RootFS read every layer to its end, checking blob digest and diff_id: the writer
        # need not read them a second time before copying them (nor download them again).
        image = replace(image, layers=fs.read_layers())
    with fs:  # the cached layer tars go as soon as the conversion ends, however it ends
        with phase(reporter, timings, "select files"):
            plan = make_plan(image, fs, options)
            if options.generic:
                check_declared_volumes(plan)
        result = ConvertResult(plan=plan, phases=timings)
        result.input_bytes = sum(entry.size for entry in fs.entries.values() if entry.kind == "file")
        if options.dry_run:
            return result
        random = random_source(options.deterministic_keys_from, key_context(image, plan))
        code_key = new_code_key(options.deterministic_keys_from, key_context(image, plan)) if plan.encrypted_code else None
        with phase(reporter, timings, "runtime"):
            runtime = build_runtime() if options.runtime == "sim" else None  # built once, then cached
        with writing(f"the temp directory {tempfile.gettempdir()} (TMPDIR)",
                     unwritable=False), \
                tempfile.TemporaryDirectory(prefix="sconify-") as work, Spool(work) as spool, \
                contextlib.ExitStack() as later:
            # The input layers that hold protected plaintext, written again without it: ``base``
            # is the input with those layers replaced, what the output is built on.
            rewritten = {}
            if plan.rewrites:
                with phase(reporter, timings, "rewrite layers", total=len(plan.rewrites)):
                    rewritten = rewrite_layers(image.layers, plan.rewrites, work)
            base = replace_layers(image, rewritten)
            # A docker:// output: the input blobs go now (HEAD, mount or upload), the new layers
            # as soon as each is written, while the conversion goes on; the tag comes last.
            push = later.enter_context(early_push(base, options))
            wanted = files_to_read(fs, plan)
            with phase(reporter, timings, "read files", total=len(wanted)):
                extents = spool_files(fs, wanted, spool, reporter)
                libraries, result.missing_libraries = resolve_libraries(fs, plan, spool, extents, reporter, elf)
            embedded = sorted(set(plan.code_files) | set(libraries))
            with phase(reporter, timings, "embed", total=len(embedded)):
                original_exe = Path(work, "original")
                spool.copy_to_file(extents[plan.executable.path], str(original_exe))
                sconified_exe = Path(work, "sconified")
                elf.validate(str(original_exe), absolute(plan.executable.path))
                secret = set(plan.encrypted_code)
                packed, injected = pack_into(sconified_exe, original_exe,
                                             [archive_entry(fs, spool, extents, p, encrypted=p in secret)
                                              for p in embedded], code_key)
                # encrypted code leaves the rootfs whatever --keep-embedded says
                removed = plan.encrypted_code if options.keep_embedded else plan.removed_code()
                executable = executable_figures(plan, original_exe, sconified_exe)
                embedfs = embedfs_figures(packed, removed, plan.encrypted_code_roots)
                embedded_bytes = sum(extents[p].size for p in embedded if p in extents)
                # The code is in the executable now: from here on only data files are read.
                data_files = plan.data_paths()
                fs.release_all_but(data_files)
                extents = {path: extents[path] for path in data_files}  # the others' bytes are gone
                reporter.advance(len(embedded))
            # The input blobs are copied from here on, on a thread, while measure and protect run.
            prefetch = later.enter_context(prefetch_input_blobs(base, options.destination, work))
            linked = prefetch is not None  # the new layers' blobs will be linked into the output too
            with phase(reporter, timings, "measure"):
                measurement = measure_elf(str(sconified_exe), **measure_parameters(options))
            with phase(reporter, timings, "protect data"):
                # Ciphertext does not compress (zstd saves well under 1 % on it): unless a
                # compression is asked for, the data layer is a plain tar, which spares
                # compressing and hashing it twice.
                follow = push.follow() if push is not None else None
                if options.generic:  # no key, no fspf: each deployment's launcher makes its own
                    data = declare_volumes(fs, plan.volumes, work, options.compression or "none", direct=linked,
                                           follow=follow)
                else:
                    data = write_data_layer(fs, plan.volumes, plan.data_files, spool, extents, random, work,
                                            options.compression or "none", direct=linked, follow=follow)
                data_layer, volumes = data.layer, data.volumes
                if prefetch is not None:
                    prefetch.sync(data_layer)  # to disk while the code layer is written
                if push is not None:
                    push.add(data_layer)
            with phase(reporter, timings, "write layers"):
                code_layer = build_code_layer(fs, plan.executable, sconified_exe, injected, removed, work,
                                              options, direct=linked)
                if push is not None:
                    push.add(code_layer)
                added = [code_layer, data_layer]
                policy = command_policy(options, image, plan)
                runtime_json = b""
                if runtime is not None:
                    sealed, shallow = sealed_roots(fs, plan.roots), shallow_roots(plan.roots)
                    extensions = plan.roots.extensions if plan.roots else ()
                    left = left_files(fs, sealed + embedded_packages(shallow, embedded), embedded, extensions,
                                      [r["path"] for r in plan.regions if r["path"] != "/"])
                    runtime_json = config = runtime_config(
                        plan.executable.path, executable.sconified_sha256, measurement.parameters,
                        measurement.mrenclave, volumes, [r["path"] for r in plan.regions if r["kind"] == "ephemeral"],
                        [absolute(p) for p in plan_scripts(plan)], sealed, left, shallow, extensions, policy)
                    layer, runtime_files = runtime_layer(runtime, config, work, layer_compression(options),
                                                         direct=linked)
                    added.append(layer)
                    if push is not None:
                        push.add(layer)
            # The output set appears whole or not at all: the image is written up to its last,
            # atomic step (index.json or the archive renamed, docker load, the manifest PUT with
            # its tag); then manifest, session and keys are staged beside their targets (written,
            # fsynced); then the image's last step; then the three files are renamed into place.
            # A failure before that last step leaves the destination and the files as they were.
            with phase(reporter, timings, "write image"), StagedFiles() as staged:
                reused = base if prefetch is None else replace(base, layers=prefetch.layers(base.layers))
                appended = append_layers(
                    reused, added, history=history_entries(image, plan, len(embedded))[:len(added)]
                )
                config = new_config(appended.config, image, options, plan, measurement, packed.root_hash)
                output = with_config(appended, wrap_entrypoint(config) if runtime is not None else config)
                manifests: list[Manifest] = []

                def stage_files(written: WriteResult) -> None:
                    manifest = Manifest(
                        input=image_figures(options.source, image),
                        output=image_figures(options.destination, output, written),
                        code_layer=code_layer.diff_id,
                        data_layer=data_layer.diff_id,
                        executable=executable,
                        embedfs=embedfs,
                        measurement=measurement_figures(measurement),
                        volumes=[volume.figures() for volume in volumes],
                        regions=[region for region in plan.regions if not is_volume(region)],
                        generic=options.generic,
                        workdir=service_workdir(image, plan) if options.generic else "",
                        rewritten_layers=[rewrite.figures(image.layers[rewrite.index], rewritten[rewrite.index])
                                          for rewrite in plan.rewrites],
                        tool_version=__version__,
                        runtime=None if runtime is None else RuntimeFigures(
                            mode=options.runtime, layer=added[2].diff_id,
                            entrypoint=output.config["config"]["Entrypoint"], files=runtime_files,
                            policy=policy.to_dict()),
                    )
                    keys = KeysFile(
                        volumes=tuple(
                            VolumeKeys(v.path, v.fspf_path, v.key, v.tag, v.protection) for v in volumes
                        ),
                        mrenclave=measurement.mrenclave,
                        session_name=session_name(options),
                        executable_sha256=executable.sconified_sha256,
                        code_key=code_key,
                        runtime_config_sha256=hashlib.sha256(runtime_json).hexdigest() if runtime_json else "",
                    )
                    if not options.generic:  # a generic image has no key: nothing to write
                        with writing(f"--keys-out {options.keys_out}"):
                            keys.write(options.keys_out, staged)
                    with writing(f"--manifest-out {options.manifest_out}"):
                        manifest.write(options.manifest_out, staged)
                    with writing(f"--session-out {options.session_out}"):
                        write_session(session_spec(options, image, plan, measurement.mrenclave, volumes, policy),
                                      options.session_out, staged)
                    manifests.append(manifest)

                with writing(f"--to {options.destination}"):
                    if push is not None:
                        written = push.finish(output, stage_files)
                    else:
                        written = write_image(output, options.destination, compression=options.compression,
                                              before_commit=stage_files)
                with writing("the output files (manifest, session, keys)"):
                    staged.commit()
                manifest = manifests[0]
        result.manifest = manifest
        result.embedded_files = packed.file_count
        result.embedded_bytes = embedded_bytes
        result.encrypted_files = sum(len(v.files) for v in volumes if v.protection == "encrypted")
        result.authenticated_files = sum(len(v.files) for v in volumes if v.protection == "authenticated")
        result.removed_files = len(removed)
        result.written = {
            "image": written.reference,
            "manifest": options.manifest_out,
            "session": options.session_out,
            **({"keys": options.keys_out} if not options.generic else {}),
        }
        return result


def early_push(image: Image, options: ConvertOptions):
    """A RegistryPush to a docker:// destination, the input's layers already added (see
    sconify.image.registry.push), else a context of None."""
    reference = parse_reference(options.destination)
    if reference.transport != "docker":
        return contextlib.nullcontext(None)
    from sconify.image.registry.push import RegistryPush
    from sconify.image.transports import registry_options_of

    push = RegistryPush(reference, options.compression, registry_options_of(options.destination, None), image.layers)
    for layer in image.layers:
        push.add(layer)
    return push


def needs_blob_copies(options: ConvertOptions) -> bool:
    """Whether the input layers must be copied as they are read (see RootFS.read_layers): they
    come from a registry and go elsewhere than that registry, which would otherwise be asked
    for them twice (the same registry is only asked whether it has them, or to mount them)."""
    source, destination = parse_reference(options.source), parse_reference(options.destination)
    if source.transport != "docker":
        return False
    return destination.transport != "docker" or destination.registry != source.registry


def prefetch_input_blobs(image: Image, destination: str, work: str):
    """A BlobPrefetch of the input blobs when ``destination`` is an OCI layout the copies can be
    linked into (see sconify.image.prefetch), else a context of None."""
    reference = parse_reference(destination)
    if reference.transport != "oci" or not same_filesystem(work, reference.path):
        return contextlib.nullcontext(None)
    present = [layer.digest for layer in image.layers if Path(reference.path, blob_name(layer.digest)).exists()]
    return BlobPrefetch(image.layers, work, skip=present)


# --- checks ---------------------------------------------------------------------


def same_image_location(a: str, b: str) -> bool:
    """Whether writing reference ``b`` could overwrite or disturb image ``a``: an archive file is
    rewritten whole whatever its tag; a layout at the same tag, or untagged on either side (an
    untagged reference only reads a layout that holds one image); the engine at the same name."""
    first, second = parse_reference(a), parse_reference(b)
    if first.transport == "docker-daemon" or second.transport == "docker-daemon":
        return first.transport == second.transport and docker_name(first) == docker_name(second)
    if os.path.realpath(first.path) != os.path.realpath(second.path):
        return False
    if "archive" in first.transport or "archive" in second.transport:
        return True
    return not first.tag or not second.tag or first.tag == second.tag


def docker_name(reference) -> str:
    """``name:tag`` as the engine stores it (docker.io/ and library/ implied, tag latest)."""
    name = reference.path.removeprefix("docker.io/")
    if "/" not in name:
        name = "library/" + name
    return f"{name}:{reference.tag or 'latest'}"


MAX_HEAP_SIZE = 64 << 30  # bounds that keep a typo (64T) from measuring for hours
MAX_STACK_SIZE = 1 << 30
MAX_THREADS = 1024


def check_options(options: ConvertOptions) -> None:
    """Everything about the options that can be checked before reading the image."""
    layer_limits(options)  # refuses bounds that are not positive
    check_env_names(options.allow_env)
    if options.max_entries is not None and options.max_entries <= 0:
        raise UsageError("--max-entries must be positive")
    if same_image_location(options.source, options.destination):
        raise UsageError(
            f"--to {options.destination} would overwrite the input image; sconify never changes its "
            "input, pass another --to reference"
        )
    if options.session_name is not None:
        check_session_name(options.session_name)
    check_measurement_parameters(options)
    check_runtime_mode(options.runtime)
    check_generic_options(options)
    if not options.dry_run:
        check_output_paths(options)


def check_generic_options(options: ConvertOptions) -> None:
    """--generic makes no key: the options that make or use one have nothing to work on."""
    if options.public_initial_content and not options.generic:
        raise UsageError("--public-initial-content describes a --generic image's volumes; add --generic or drop it")
    if not options.generic:
        return
    if options.public_initial_content:
        raise UsageError(
            "--public-initial-content is not supported yet: a generic image's volumes start empty; move the "
            "files out of the volume's directory in the input image (docs/deploy.md)")
    if options.runtime == "none":
        raise UsageError("--generic needs the runtime layer: a deployment's launcher opens the volumes with the "
                         "deployment's keys; drop --runtime none")
    for option, given in (("--inline-keys", options.inline_keys),
                          ("--deterministic-keys-from", options.deterministic_keys_from),
                          ("--encrypted-code", options.encrypted_code)):
        if given:
            raise UsageError(f"--generic makes no key, and {option} needs one: the image is shared, each deployment "
                             f"makes its own keys (sconify deploy init); drop {option}")


def check_measurement_parameters(options: ConvertOptions) -> None:
    for option, value, most in (
        ("--heap", options.heap_size, MAX_HEAP_SIZE),
        ("--stack", options.stack_size, MAX_STACK_SIZE),
    ):
        if value is not None and (value <= 0 or value % 4096 or value > most):
            raise UsageError(
                f"{option} {value} must be a positive multiple of 4 KiB of at most {most >> 20} MiB, e.g. 64M"
            )
    if options.threads is not None and not 1 <= options.threads <= MAX_THREADS:
        raise UsageError(f"--threads must be between 1 and {MAX_THREADS}")


def check_output_paths(options: ConvertOptions) -> None:
    """Each output is a new or regular file in a directory that exists or can be created."""
    seen: dict[str, str] = {}
    for option, path in (
        ("--manifest-out", options.manifest_out),
        ("--session-out", options.session_out),
        *((("--keys-out", options.keys_out),) if not options.generic else ()),
    ):
        resolved = os.path.realpath(path)
        if resolved in seen:
            raise UsageError(
                f"{option} and {seen[resolved]} name the same file {path}; give each its own path"
            )
        seen[resolved] = option
        if os.path.exists(resolved) and not os.path.isfile(resolved):
            raise UsageError(f"{option} {path} exists and is not a regular file; choose another path")
        ancestor = existing_ancestor(os.path.dirname(resolved))
        if not os.path.isdir(ancestor):
            raise UsageError(f"{option} {path}: {ancestor} is not a directory; choose another path")
        if not os.access(ancestor, os.W_OK):
            raise EnvironmentProblem(f"cannot write {option} {path}: directory {ancestor} is not writable; "
                                     "make it writable or choose another place")
    if os.path.exists(options.keys_out) and not options.force and not options.generic:
        raise UsageError(
            f"--keys-out {options.keys_out} exists and may hold the only keys of an earlier image; "
            "pass another --keys-out, move it away, or pass --force to overwrite it"
        )


def layer_limits(options: ConvertOptions) -> LayerLimits:
    return LayerLimits.from_options(options.max_layer_size, options.max_expansion)


def rootfs_limits(options: ConvertOptions) -> RootFSLimits:
    return RootFSLimits() if options.max_entries is None else RootFSLimits(max_entries=options.max_entries)


# --- reading ------------------------------------------------------------------------------


def key_context(image: Image, plan: Plan) -> bytes:
    """What deterministic keys are derived for: the input (its config digest covers every
    layer's diff_id) and the regions."""
    return canonical_json({"input": image.config_digest, "regions": plan.regions})


def files_to_read(fs: RootFS, plan: Plan) -> list[str]:
    """Code, data, the executable and every library the closure may need: one pass reads all."""
    recipe = plan.executable.recipe
    wanted = {p for p in plan.code_files if fs.entries[p].kind != "symlink"}
    wanted.add(plan.executable.path)
    wanted.update(plan.data_paths())
    if recipe.follow_needed:
        wanted.update(candidate_libraries(fs, recipe.search_path))
    return sorted(wanted)


def spool_files(fs: RootFS, paths: list[str], spool: Spool, reporter: Reporter) -> dict[str, Extent]:
    """Where the content of ``paths`` (regular files) is: in a layer tar RootFS cached, or else
    copied into the spool, streaming each layer once; hardlinked paths share one extent."""
    first_of: dict[tuple[int, int], str] = {}
    for path in paths:
        entry = fs.entries[path]
        first_of.setdefault((entry.data_layer, entry.data_offset), path)
    extents: dict[str, Extent] = {}
    uncached = []
    for path in sorted(set(first_of.values())):
        cached = fs.cached_content(path)
        if cached is None:
            uncached.append(path)
        else:  # the layer tar RootFS kept: point into it, nothing to copy
            fd, offset, size = cached
            extents[path] = Extent(offset, size, fd)
    reporter.advance(len(extents))  # at once: 35,000 progress updates cost 0.2 s
    for entry, stream in fs.iter_files(uncached):
        extents[entry.path] = spool.append_stream(stream, entry.size)
        reporter.advance(1)
    for path in paths:
        entry = fs.entries[path]
        source = first_of[(entry.data_layer, entry.data_offset)]
        if source not in extents:
            raise UsageError(f"could not read {absolute(path)} from the image layers; the image is corrupt")
        if path != source:
            extents[path] = extents[source]
    reporter.advance(len(paths) - len(first_of))
    return extents


def resolve_libraries(
    fs: RootFS, plan: Plan, spool: Spool, extents: dict[str, Extent], reporter: Reporter, elf: ElfWorker
) -> tuple[list[str], list[str]]:
    """Shared objects (and the symlinks naming them) that the executable and the embedded
    code load, read from the spool (spooling any outside the search path on demand), and the
    sonames no file in the image provides."""
    recipe = plan.executable.recipe
    if not recipe.follow_needed:
        return [], []
    shared_objects = [p for p in native_code(plan.code_files) if fs.entries[p].kind != "symlink"]  # .node too

    def dynamic_info(path: str):
        if path not in extents:
            extents.update(spool_files(fs, [path], spool, reporter))
        extent = extents[path]
        return elf.dynamic_dependencies_at(spool.fileno(extent), extent.offset, extent.size, absolute(path))

    closure = library_closure(
        fs, [plan.executable.path, *shared_objects], dynamic_info, recipe.search_path, recipe.dlopen
    )
    return closure.libraries + closure.links, closure.missing


def pack_into(
    sconified: Path, original: Path, entries: list[ArchiveEntry], code_key: bytes | None = None
) -> tuple[PackResult, InjectResult]:
    """Pack ``entries`` straight into ``sconified``, the original executable with its embedfs
    archive appended (no archive file between them); encrypted entries are sealed under
    ``code_key``."""
    packed: list[PackResult] = []

    def append(out: BinaryIO) -> tuple[int, str]:
        packed.append(pack(entries, out, code_key=code_key))
        return packed[0].size, packed[0].root_hash

    injected = inject_with(str(original), append, str(sconified), validate=False)  # lief validated it
    return packed[0], injected


def archive_entry(fs: RootFS, spool: Spool, extents: dict[str, Extent], path: str,
                  encrypted: bool = False) -> ArchiveEntry:
    entry = fs.entries[path]
    if entry.kind == "symlink":  # a symlink's target is in the index: never encrypted
        return ArchiveEntry(
            path=path,
            kind="symlink",
            mode=entry.mode,
            uid=entry.uid,
            gid=entry.gid,
            size=0,
            linkname=entry.linkname,
            source=None,
        )
    extent = extents[path]
    return ArchiveEntry(
        path=path,
        kind="file",
        mode=entry.mode,
        uid=entry.uid,
        gid=entry.gid,
        size=extent.size,
        source=lambda: spool.open(extent),
        encrypted=encrypted,
    )


def measure_parameters(options: ConvertOptions) -> dict:
    from embedfs import measure as M

    return {
        "heap_size": options.heap_size or M.DEFAULT_HEAP_SIZE,
        "stack_size": options.stack_size or M.DEFAULT_STACK_SIZE,
        "threads": options.threads or M.DEFAULT_THREADS,
    }


# --- layers and config --------------------------------------------------------------------


def build_code_layer(
    fs: RootFS,
    executable: Executable,
    sconified: Path,
    embedded: InjectResult,
    removed: list[str],
    work: str,
    options: ConvertOptions,
    direct: bool = False,
) -> Layer:
    entry = fs.entries[executable.path]
    with LayerWriter(layer_compression(options), directory=work, source="code layer", direct=direct) as writer:

        def write_executable(sink: BinaryIO) -> None:
            # The embedfs archive is zstd frames already: the layer compresses it at a fast level.
            with sconified.open("rb") as source:
                copy_part(source, sink, embedded.archive_offset)
                with writer.incompressible():
                    copy_part(source, sink, embedded.archive_size)
                copy_part(source, sink, embedded.output_size - embedded.archive_offset - embedded.archive_size)

        entries = [
            TarEntry(
                path=executable.path,
                kind="file",
                mode=entry.mode,
                uid=entry.uid,
                gid=entry.gid,
                size=embedded.output_size,
                mtime=getattr(entry, "mtime", 0),
                write=write_executable,
            )
        ]
        entries += [whiteout_for(path) for path in removed]
        write_layer_tar(entries, writer.stream)
    return writer.layer


def copy_part(source: BinaryIO, sink: BinaryIO, count: int) -> None:
    """A part of the sconified executable into the code layer."""
    if missing := copy_exactly(source, sink, count):
        raise UsageError(f"{source.name} ended {missing} bytes early while writing the code layer")


def layer_compression(options: ConvertOptions) -> str:
    """New layers are compressed once, in what the destination transport takes by default."""
    from sconify.image.transports import DEFAULT_COMPRESSION

    if options.compression:
        return options.compression
    transport = parse_reference(options.destination).transport
    return DEFAULT_COMPRESSION[transport] if transport != "docker-daemon" else "gzip"


def session_name(options: ConvertOptions) -> str:
    if options.session_name:
        return options.session_name
    reference = parse_reference(options.destination)
    base = posixpath.basename((reference.path or "image").rstrip("/")).split(".")[0] or "image"
    cleaned = "".join(c if c.isalnum() or c in "_.-" else "-" for c in base).strip(".-") or "image"
    return f"sconify-{cleaned}"[:128]


def new_config(
    config: dict, image: Image, options: ConvertOptions, plan: Plan, measurement, root_hash: str
) -> dict:
    """``config`` with labels naming what was done (the environment stays as it is)."""
    inner = config.setdefault("config", {})
    labels = dict(inner.get("Labels") or {})
    labels.pop("org.opencontainers.image.base.name", None)  # a local path would leak; we have none
    if image.manifest_digest:
        labels["org.opencontainers.image.base.digest"] = image.manifest_digest
    labels.update(
        {
            LABEL_PREFIX + "base.config-digest": image.config_digest,
            LABEL_PREFIX + "version": __version__,
            LABEL_PREFIX + "executable": absolute(plan.executable.path),
            LABEL_PREFIX + "mrenclave": measurement.mrenclave,
            LABEL_PREFIX + "heap-size": str(measurement.parameters["heap_size"]),
            LABEL_PREFIX + "stack-size": str(measurement.parameters["stack_size"]),
            LABEL_PREFIX + "threads": str(measurement.parameters["threads"]),
            LABEL_PREFIX + "embedfs.root-hash": root_hash,
            LABEL_PREFIX + "volumes": ",".join(volume["path"] for volume in plan.volumes),
        }
    )
    inner["Labels"] = labels
    return config


def history_entries(image: Image, plan: Plan, embedded: int) -> list[dict]:
    """One history entry per added layer, dated like the input (or SOURCE_DATE_EPOCH)."""
    epoch = source_date_epoch()
    created = image.config.get("created") or "1970-01-01T00:00:00Z"
    if epoch:
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    executable = absolute(plan.executable.path)
    return [
        {
            "created": created,
            "created_by": f"sconify-image {__version__}: embed {embedded} code files into {executable}",
            "comment": "sconify code layer",
        },
        {
            "created": created,
            "created_by": f"sconify-image {__version__}: protected data and the fspf of each volume "
                          f"({', '.join(volume['path'] for volume in plan.volumes) or 'none'})",
            "comment": "sconify data layer",
        },
        {
            "created": created,
            "created_by": f"sconify-image {__version__}: the runtime (simulation mode) that serves the embedfs "
                          f"and the volumes; ENTRYPOINT {LAUNCHER_PATH}",
            "comment": "sconify runtime layer",
        },
    ]


def executable_figures(plan: Plan, original: Path, sconified: Path) -> ExecutableFigures:
    return ExecutableFigures(
        path=absolute(plan.executable.path),
        recipe=plan.executable.recipe.name,
        original_sha256=sha256_file(original),
        original_size=original.stat().st_size,
        sconified_sha256=sha256_file(sconified),
        sconified_size=sconified.stat().st_size,
        why=list(plan.service.reasons) if plan.service else [],
        code_roots=[{"path": r.path, "kind": r.kind, "reason": r.reason} for r in plan.roots.roots] if plan.roots else [],
    )


def embedfs_figures(packed, removed: list[str], encrypted_roots: list[str]) -> EmbedfsFigures:
    return EmbedfsFigures(
        root_hash=packed.root_hash,
        file_count=packed.file_count,
        archive_size=packed.size,
        files={absolute(path): sha256 for path, sha256 in packed.files.items()},
        removed=[absolute(p) for p in removed],
        encrypted_roots=list(encrypted_roots),
    )


def measurement_figures(measurement) -> MeasurementFigures:
    parameters = measurement.parameters
    return MeasurementFigures(
        mrenclave=measurement.mrenclave,
        heap_size=parameters["heap_size"],
        stack_size=parameters["stack_size"],
        threads=parameters["threads"],
        ssa_frame_size=parameters["ssa_frame_size"],
        layout_version=parameters["layout_version"],
        enclave_size=measurement.enclave_size,
    )


def image_figures(reference: str, image: Image, written=None) -> ImageFigures:
    """The identity of the input (``written`` None) or of the output as written."""
    return ImageFigures(
        reference=reference,
        config_digest=written.config_digest if written else image.config_digest,
        diff_ids=list(image.diff_ids),
        manifest_digest=written.manifest_digest if written else image.manifest_digest,
        layer_digests=list(written.layer_digests) if written else [layer.digest for layer in image.layers],
    )


def command_policy(options, image, plan) -> Policy:
    """The policy the launcher enforces: the image's ENTRYPOINT + CMD as the launcher receives
    them, the command the measured executable runs with, and the image's environment."""
    config = image.config
    if options.allow_args and not command_of(config):
        raise UsageError(
            "--allow-args appends host arguments to the recorded command, but the image has no ENTRYPOINT or CMD: "
            "any command would get the keys; give the image a CMD (the service's command) or leave out --allow-args"
        )
    return Policy(
        command=command_of(config),
        # What the enclave runs: the measured executable with the arguments it receives once the
        # entrypoint scripts and console scripts are crossed (not `docker-entrypoint.sh node ...`).
        service_command=[absolute(plan.executable.path), *plan.service.argv[1:]] if plan.service
        else command_of(config) or [absolute(plan.executable.path)],
        environment=policy_environment(env_of(config)),
        allow_args=options.allow_args,
        allow_env=check_env_names(options.allow_env),
    )


def service_workdir(image: Image, plan: Plan) -> str:
    """Where the service runs: the directory its entrypoint scripts end in, else the image's WorkingDir."""
    inner = image.config.get("config") or {}
    return (plan.service.workdir if plan.service else None) or inner.get("WorkingDir") or "/"


def check_declared_volumes(plan: Plan) -> None:
    """A --generic image's volumes are declared, not filled: files the input holds there would be
    the same public content in every deployment, so they are refused (docs/deploy.md)."""
    for volume in plan.volumes:
        files = plan.data_files.get(volume["path"], [])
        if files:
            raise UsageError(
                f"--generic: the input image holds {len(files)} file(s) under the volume {volume['path']} "
                f"({absolute(files[0])}{', ...' if len(files) > 1 else ''}); a generic image's volumes start empty: "
                "remove them from the input image or declare another --dir (--public-initial-content is not "
                "supported yet)")


def session_spec(options, image, plan, mrenclave, volumes: list[SealedVolume], policy: Policy) -> SessionSpec:
    names = volume_names([volume.path for volume in volumes])
    return SessionSpec(
        name=session_name(options),
        service=plan.executable.recipe.name,
        image_name=options.destination,
        mrenclave=mrenclave,
        command=policy.service_command,
        environment=policy.environment,
        allow_args=policy.allow_args,
        allow_env=policy.allow_env,
        pwd=service_workdir(image, plan),
        generic=options.generic,
        volumes=tuple(
            SessionVolume(
                name=names[volume.path],
                path=volume.path,
                fspf_path=volume.fspf_path,
                fspf_tag=volume.tag.hex(),
                fspf_key=volume.key if options.inline_keys else None,
            )
            for volume in volumes
        ),
    )
