"""The measurement manifest: every figure an auditor recomputes from the output image.

Schema ``sconify.manifest/v2``, documented field by field in docs/manifest.md. Written as
sorted-key JSON so the same conversion gives the same bytes. It never holds a key.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path

from sconify.atomic import StagedFiles, atomic_write_bytes
from sconify.errors import UsageError

MANIFEST_SCHEMA = "sconify.manifest/v2"  # v2: one fspf per volume (v1: one fspf)
LABEL_PREFIX = "io.sconify."  # image config labels sconify-image writes (measure/diff read them)

# Fields that do not depend on the random keys: equal for the same input and options.
# The others (the data layer, the output image/config digests, each volume's fspf tag) change
# with fresh keys unless --deterministic-keys-from is used. "volumes[].tag": the tag of every volume.
KEY_DEPENDENT_FIELDS = (
    "output.manifest_digest",
    "output.config_digest",
    "output.diff_ids",
    "output.layer_digests",
    "output.data_layer",
    "volumes[].tag",
)


@dataclass
class ImageFigures:
    """An image's identity. ``diff_ids`` and ``config_digest`` do not depend on the transport
    or compression; ``manifest_digest`` and ``layer_digests`` are those of the written form
    ("" / [] where the transport has no manifest of its own, e.g. the Docker engine)."""

    reference: str
    config_digest: str
    diff_ids: list[str]
    manifest_digest: str = ""
    layer_digests: list[str] = field(default_factory=list)


@dataclass
class ExecutableFigures:
    path: str
    recipe: str
    original_sha256: str
    original_size: int
    sconified_sha256: str
    sconified_size: int
    # How ENTRYPOINT/CMD reaches this executable, and where its interpreter loads code from
    # (sconify.conversion.codepaths): one line per step, and {path, kind, reason} per code root.
    why: list[str] = field(default_factory=list)
    code_roots: list[dict] = field(default_factory=list)


@dataclass
class EmbedfsFigures:
    root_hash: str
    file_count: int
    archive_size: int
    files: dict[str, str]  # image path -> sha256 of the content
    removed: list[str] = field(default_factory=list)  # embedded paths whited out of the rootfs
    # --encrypted-code directories: their files are embedded encrypted, and no layer may hold
    # their plaintext (absent in manifests of conversions without it)
    encrypted_roots: list[str] = field(default_factory=list)


@dataclass
class MeasurementFigures:
    mrenclave: str
    heap_size: int
    stack_size: int
    threads: int
    ssa_frame_size: int
    layout_version: int
    enclave_size: int


@dataclass
class VolumeFigures:
    """A protected region with its own fspf (docs/manifest.md): where the fspf sits, its tag
    (the root of trust a CAS session carries) and the files it protects."""

    path: str  # the region, e.g. /app/data
    fspf_path: str  # <path>/.sconify.fspf
    protection: str  # encrypted | authenticated
    tag: str
    files: dict[str, dict]  # image path -> {"size"}


@dataclass
class RuntimeFigures:
    """The runtime layer of a ``--runtime sim`` conversion (docs/runtime.md): not measured (it
    runs outside the enclave), so recorded here for the auditor to check byte for byte."""

    mode: str  # "sim"
    layer: str  # diff_id of the runtime layer
    entrypoint: list[str]  # the output's ENTRYPOINT: the launcher, then the input's ENTRYPOINT
    files: dict[str, str]  # image path -> SHA-256 (launcher, shield, runtime config)
    # The policy runtime.json records (command, service_command, environment, allow_args,
    # allow_env): the auditor compares it with the config and with session.yaml.
    policy: dict | None = None


@dataclass
class Manifest:
    input: ImageFigures
    output: ImageFigures
    code_layer: str  # diff_id of the layer with the sconified executable and the whiteouts
    data_layer: str  # diff_id of the layer with the encrypted files and the fspf
    executable: ExecutableFigures
    embedfs: EmbedfsFigures
    measurement: MeasurementFigures
    volumes: list[VolumeFigures]  # sorted by path
    regions: list[dict]  # {"path", "kind", "protection"} of the regions that are not volumes
    tool_version: str
    # The input layers written again without the plaintext of protected files (sconify.image.rewrite):
    # {"index", "input_diff_id", "output_diff_id", "removed_entries", "materialized_hardlinks", "regions"}
    rewritten_layers: list[dict] = field(default_factory=list)
    runtime: RuntimeFigures | None = None  # None: --runtime none
    # --generic (docs/deploy.md): the volumes are declared (no fspf, tag "", no files) and no key
    # was made; ``workdir`` is where the service runs, for a deployment's policy. Both are left
    # out of the JSON of other images.
    generic: bool = False
    workdir: str = ""
    schema: str = MANIFEST_SCHEMA
    extra: dict = field(default_factory=dict)

    def volume(self, path: str) -> VolumeFigures | None:
        return next((volume for volume in self.volumes if volume.path == path), None)

    def all_regions(self) -> list[dict]:
        """Every region, volumes and the others, as ``{"path", "kind", "protection"}`` sorted by path."""
        regions = [{"path": v.path, "kind": "kernel", "protection": v.protection} for v in self.volumes]
        return sorted(regions + list(self.regions), key=lambda region: region["path"])

    def protected_files(self) -> dict[str, dict]:
        """image path -> ``{"volume", "protection", "size"}`` of every file of every volume."""
        return {
            path: {"volume": volume.path, "protection": volume.protection, **info}
            for volume in self.volumes
            for path, info in volume.files.items()
        }

    def to_dict(self) -> dict:
        doc = _plain(self)
        doc["output"]["data_layer"] = doc.pop("data_layer")
        doc["output"]["code_layer"] = doc.pop("code_layer")
        doc["tool"] = {"name": "sconify", "version": doc.pop("tool_version")}
        for name in ("generic", "workdir"):
            if not doc[name]:
                del doc[name]
        doc.update(doc.pop("extra"))
        return doc

    def to_json(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n").encode()

    def write(self, path: str | os.PathLike, staged: StagedFiles | None = None) -> None:
        atomic_write_bytes(path, self.to_json(), staged=staged)

    @classmethod
    def from_dict(cls, doc: dict) -> "Manifest":
        if doc.get("schema") != MANIFEST_SCHEMA:
            raise UsageError(
                f"manifest schema is {doc.get('schema')!r}, this sconify reads "
                f"{MANIFEST_SCHEMA!r}; use the sconify version named in the manifest's tool field"
            )
        output = dict(doc["output"])
        data_layer = output.pop("data_layer")
        code_layer = output.pop("code_layer")
        known = {"schema", "input", "output", "executable", "embedfs", "measurement", "volumes", "regions",
                 "tool", "runtime", "rewritten_layers", "generic", "workdir"}
        return cls(
            input=ImageFigures(**doc["input"]),
            output=ImageFigures(**output),
            code_layer=code_layer,
            data_layer=data_layer,
            executable=ExecutableFigures(**doc["executable"]),
            embedfs=EmbedfsFigures(**doc["embedfs"]),
            measurement=MeasurementFigures(**doc["measurement"]),
            volumes=[VolumeFigures(**volume) for volume in doc["volumes"]],
            regions=[dict(region) for region in doc["regions"]],
            tool_version=doc["tool"]["version"],
            rewritten_layers=[dict(layer) for layer in doc.get("rewritten_layers", [])],
            runtime=RuntimeFigures(**doc["runtime"]) if doc.get("runtime") is not None else None,
            generic=doc.get("generic", False),
            workdir=doc.get("workdir", ""),
            extra={k: v for k, v in doc.items() if k not in known},
        )

    @classmethod
    def read(cls, path: str | os.PathLike) -> "Manifest":
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read manifest {path}: {exc.strerror}") from None
        return cls.parse(data, str(path))

    @classmethod
    def parse(cls, data: bytes, where: str) -> "Manifest":
        """A manifest from its bytes, or a one-line UsageError saying what is wrong with them."""
        try:
            doc = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError:
            raise UsageError(
                f"manifest {where} is not UTF-8 text; pass the manifest.json written by sconify-image"
            ) from None
        except json.JSONDecodeError as exc:
            raise UsageError(f"manifest {where} is not JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(doc, dict):
            raise UsageError(
                f"manifest {where} is not a JSON object; pass the manifest.json written by sconify-image"
            )
        try:
            manifest = cls.from_dict(doc)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise UsageError(
                f"manifest {where} lacks or misnames a field ({exc}); pass the manifest.json "
                "written by sconify-image"
            ) from None
        check_regions(manifest, where)
        numbers = vars(manifest.measurement) | {"file_count": manifest.embedfs.file_count}
        for name, value in numbers.items():
            if name != "mrenclave" and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise UsageError(
                    f"manifest {where}: {name} must be a non-negative whole number, not {value!r}"
                )
        return manifest


def check_regions(manifest: Manifest, where: str) -> None:
    """The volumes and regions have the types verify relies on (a hand-edited manifest gets a
    one-line error, not a crash)."""
    for volume in manifest.volumes:
        if not (
            all(isinstance(text, str) for text in (volume.path, volume.fspf_path, volume.tag))
            and volume.path.startswith("/")
            and volume.protection in ("encrypted", "authenticated")
            and isinstance(volume.files, dict)
            and all(
                isinstance(info, dict) and isinstance(info.get("size"), int) for info in volume.files.values()
            )
        ):
            raise UsageError(
                f"manifest {where}: volume {str(volume.path)[:80]!r} is malformed; pass the manifest.json "
                "written by sconify-image"
            )
    if not isinstance(manifest.generic, bool) or not isinstance(manifest.workdir, str) or (
            manifest.generic and any(volume.tag or volume.files for volume in manifest.volumes)):
        raise UsageError(f"manifest {where}: generic, workdir or a generic image's volume is malformed (a declared "
                         "volume has no tag and no files); pass the manifest.json written by sconify-image")
    for region in manifest.regions:
        if not all(isinstance(region.get(key), str) for key in ("path", "kind", "protection")):
            raise UsageError(
                f"manifest {where}: region {str(region.get('path'))[:80]!r} is malformed; pass the "
                "manifest.json written by sconify-image"
            )


def _plain(value):
    """A dataclass as a dict, nested dataclasses too; other values as they are. Unlike
    dataclasses.asdict it does not deep-copy the lists and dicts (tens of thousands of file
    entries in a big image): the result is for json.dumps, read only."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, list) and value and is_dataclass(value[0]):
        return [_plain(item) for item in value]
    return value
