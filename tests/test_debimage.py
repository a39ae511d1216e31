"""The demo images are real software with real layer semantics, built deterministically."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import docker
import pytest

import sconify
from sconify.demo import debimage
from sconify.cli.main import run as sconify_main
from sconify.errors import EnvironmentProblem, UsageError
from sconify.image.transports import read_image


def layer_members(layout: Path, index: int) -> dict[str, tarfile.TarInfo]:
    """Headers of one layer of the ``latest`` image in ``layout``, by path."""
    image = read_image(f"oci:{layout}:latest")
    with image.layers[index].open_tar() as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        return {member.name.rstrip("/"): member for member in tar}


def manifest_digest(layout: Path) -> str:
    return json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]


# ----------------------------------------------------------------------------- real software


@pytest.mark.docker
def test_python_image_imports_json_sqlite3_and_ssl(python_image, run_in_docker):
    out = run_in_docker(f"oci:{python_image}:latest", ["python3", "-c", "import json, sqlite3, ssl; print(ssl.OPENSSL_VERSION)"])
    assert out.startswith("OpenSSL 3.")


@pytest.mark.docker
def test_python_app_reads_its_data_dir_and_sees_the_app_layer(python_image, run_in_docker):
    report = json.loads(run_in_docker(f"oci:{python_image}:latest"))  # the image's CMD
    assert report["rows"] == 400
    assert report["greeting"] == "hello from the app layer"
    assert report["blob_sha256"] == hashlib.sha256(debimage.demo_bytes("sconify-demo-python", 3 * 1024 * 1024 // 2)).hexdigest()


@pytest.mark.docker
def test_node_image_runs_node_with_its_node_modules_tree(node_image, run_in_docker):
    ref = f"oci:{node_image}:latest"
    script = 'require("assert"); console.log(require("ms/package.json").version, require("debug/node_modules/ms/package.json").version)'
    assert run_in_docker(ref, ["node", "-e", script]).split() == ["2.1.3", "2.1.2"]
    report = json.loads(run_in_docker(ref))  # the image's CMD
    assert report["rows"] == 400
    assert report["uptime_budget"] == "2d"
    assert report["greeting"] == "hello from the app layer"


@pytest.mark.docker
def test_python_tests_image_runs_cpythons_own_regression_tests(run_in_docker):
    """The oracle of issue 23 (bench/cpython_oracle.py) is Debian's CPython test suite, runnable."""
    layout = debimage.build_image("python-tests")
    assert read_image(f"oci:{layout}:latest").config["config"]["Cmd"][:4] == ["python3", "-m", "test", "-j2"]
    out = run_in_docker(f"oci:{layout}:latest", ["python3", "-m", "test", "test_stat"])
    assert "Tests result: SUCCESS" in out


@pytest.mark.docker
def test_docker_applies_whiteout_opaque_dir_and_hardlink(python_image, run_in_docker):
    probe = (
        "import os; print(os.path.exists('/usr/bin/pydoc3.11'), sorted(os.listdir('/etc/sconify-demo')), "
        "os.stat('/app/data/readings.csv').st_ino == os.stat('/app/data/readings-latest.csv').st_ino, "
        "os.path.realpath('/app/config.json'))"
    )
    out = run_in_docker(f"oci:{python_image}:latest", ["python3", "-c", probe])
    assert out.split() == ["False", "['defaults.json']", "True", "/app/data/config.json"]


# ----------------------------------------------------------------------------- layer semantics


def test_python_image_has_a_base_and_an_app_layer_with_cmd_and_workdir(python_image):
    image = read_image(f"oci:{python_image}:latest")
    assert len(image.layers) == 2
    assert image.config["config"]["Cmd"] == ["python3", "/app/main.py"]
    assert image.config["config"]["WorkingDir"] == "/app"
    assert image.config["architecture"] == "amd64"


def test_base_layer_is_the_debian_closure_with_its_symlinks(python_image):
    base = layer_members(python_image, 0)
    assert base["usr/bin/python3"].issym() and base["usr/bin/python3"].linkname == "python3.11"
    assert base["usr/bin/python3.11"].isfile() and base["usr/bin/python3.11"].size > 1_000_000
    assert base["usr/bin/pydoc3.11"].isfile()  # deleted again by the app layer
    assert base["etc/sconify-demo/legacy.conf"].isfile()  # hidden by the app layer's opaque dir
    assert base["tmp"].isdir() and base["tmp"].mode == 0o1777
    assert base["usr/bin/perl5.36.0"].islnk() and base["usr/bin/perl5.36.0"].linkname == "usr/bin/perl"  # Debian's own hardlink
    assert sum(1 for m in base.values() if m.issym()) > 50


def test_app_layer_holds_whiteout_opaque_dir_hardlink_and_symlink(python_image, node_image):
    for layout, deleted in ((python_image, "usr/bin/.wh.pydoc3.11"), (node_image, "usr/bin/.wh.nodejs")):
        app = layer_members(layout, 1)
        assert app[deleted].isfile() and app[deleted].size == 0
        assert app["etc/sconify-demo/.wh..wh..opq"].isfile()
        # one inode, two names: the first name in sort order holds the data
        assert app["app/data/readings-latest.csv"].isfile()
        assert app["app/data/readings.csv"].islnk()
        assert app["app/data/readings.csv"].linkname == "app/data/readings-latest.csv"
        assert app["app/config.json"].issym() and app["app/config.json"].linkname == "data/config.json"
        assert app["app/data/blob.bin"].size > 1024 * 1024


def test_node_app_layer_has_a_nested_node_modules_tree(node_image):
    app = layer_members(node_image, 1)
    for path in ("app/node_modules/ms/index.js", "app/node_modules/debug/src/node.js",
                 "app/node_modules/debug/node_modules/ms/package.json", "app/node_modules/is-number/index.js"):
        assert app[path].isfile(), path
    assert layer_members(node_image, 0)["usr/bin/nodejs"].issym()


def test_layer_tars_are_sorted_owned_by_root_and_clamped_to_the_epoch(python_image):
    for index in (0, 1):
        image = read_image(f"oci:{python_image}:latest")
        with image.layers[index].open_tar() as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            members = list(tar)
        names = [m.name.rstrip("/") for m in members]
        assert names == sorted(names)
        assert {(m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, "", "")}
        assert max(m.mtime for m in members) <= debimage.DEFAULT_EPOCH


# ----------------------------------------------------------------------------- determinism, cache


@pytest.mark.slow
def test_building_again_in_a_fresh_cache_gives_the_same_digest(python_image, tmp_path):
    fresh = tmp_path / "cache"
    fresh.mkdir()
    (fresh / "debs").symlink_to(debimage.cache_dir() / "debs")  # same packages, no second download
    rebuilt = debimage.build_image("python", cache=fresh)
    assert rebuilt != python_image
    assert manifest_digest(rebuilt) == manifest_digest(python_image)


def test_a_cached_image_is_reused_unchanged(python_image):
    index_mtime = (python_image / "index.json").stat().st_mtime_ns
    assert debimage.build_image("python") == python_image
    assert debimage.is_built("python")
    assert (python_image / "index.json").stat().st_mtime_ns == index_mtime


def test_a_different_epoch_is_a_different_cache_entry(python_image):
    assert debimage.image_layout("python", epoch=debimage.DEFAULT_EPOCH + 1) != python_image


def test_hardlink_data_is_stored_once_under_the_first_name_in_sort_order():
    out = io.BytesIO()
    debimage.write_layer_tar(debimage.hardlinks(["x/b", "x/a"], "same"), out, epoch=100)
    out.seek(0)
    with tarfile.open(fileobj=out) as tar:
        members = {m.name.rstrip("/"): m for m in tar}
        assert members["x"].isdir()  # parent directory added
        assert members["x/a"].isfile() and tar.extractfile(members["x/a"]).read() == b"same"
        assert members["x/b"].islnk() and members["x/b"].linkname == "x/a"


# ----------------------------------------------------------------------------- the CLI


def test_sconify_demo_writes_the_cached_image_to_the_target(python_image, tmp_path, capsys):
    assert sconify_main(["demo", "python", "--to", f"oci:{tmp_path / 'out'}:python"]) == 0
    assert "wrote demo python image" in capsys.readouterr().out
    written = read_image(f"oci:{tmp_path / 'out'}:python")
    assert written.diff_ids == read_image(f"oci:{python_image}:latest").diff_ids


def test_sconify_demo_with_a_bad_reference_fails_in_one_line_and_writes_nothing(python_image, tmp_path, capsys):
    assert sconify_main(["demo", "python", "--to", f"nowhere:{tmp_path / 'x'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sconify: error: ") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_unknown_demo_name_is_a_usage_error():
    with pytest.raises(UsageError, match="choose one of: python, node"):
        debimage.get_spec("ruby")


# ----------------------------------------------------------------------------- errors


def test_an_unavailable_pinned_version_says_to_run_apt_get_update(tmp_path):
    missing = debimage.DebPackage("python3", "0.0.1-not-in-debian")
    with pytest.raises(EnvironmentProblem, match=r"python3=0\.0\.1-not-in-debian .*apt-get update"):
        debimage.download_debs([missing], tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == []  # no partial download left behind


def test_an_npm_tarball_that_does_not_match_its_pin_is_rejected_and_removed(node_image, tmp_path):
    shutil.copy(debimage.cache_dir() / "npm" / "ms-2.1.3.tgz", tmp_path)
    forged = debimage.NpmPackage("ms", "2.1.3", "sha512-" + "A" * 86 + "==", "node_modules/ms")
    with pytest.raises(EnvironmentProblem, match="does not match its pinned integrity"):
        debimage.fetch_npm([forged], tmp_path)
    assert not (tmp_path / "ms-2.1.3.tgz").exists()


def test_source_date_epoch_must_be_a_number(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(UsageError, match="SOURCE_DATE_EPOCH"):
        debimage.source_date_epoch()


# ----------------------------------------------------------------------------- packaging


REPO_ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_exactly_the_readme_test_command():
    readme = (REPO_ROOT / "README.md").read_text()
    ci_script = (REPO_ROOT / ".ci" / "run").read_text()
    test_command = ci_script.strip().splitlines()[-1]
    assert "pytest" in test_command
    assert f"\n{test_command}\n" in readme


@pytest.mark.slow
@pytest.mark.docker
def test_dockerfile_builds_an_image_that_converts_a_mounted_oci_archive(docker_client, python_image, tmp_path):
    """The Dockerfile on the Debian-package tool base, from wheels, with no network in the build;
    the tool image then converts the Python demo given as an oci-archive in a mounted directory."""
    from sconify.image.transports import read_image, write_image
    from sconify.outputs.keys import KeysFile
    from sconify.outputs.manifest import Manifest
    from sconify.conversion.runtime import build_runtime
    from sconify.verify import verify_image

    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", str(REPO_ROOT), "-w", str(tmp_path / "wheels")], check=True)
    for name in ("Dockerfile", ".dockerignore"):
        shutil.copy(REPO_ROOT / name, tmp_path / name)
    runtime = build_runtime()  # what `make -C runtime` leaves in runtime/build
    for built, sub in ((runtime.launcher, "bin"), (runtime.shield, "lib")):
        (tmp_path / "runtime" / "build" / sub).mkdir(parents=True)
        shutil.copy2(built, tmp_path / "runtime" / "build" / sub / built.name)
    base = debimage.build_image("tool-base")
    write_image(read_image(f"oci:{base}:latest"), "docker-daemon:sconify-test-tool-base:latest")
    try:
        docker_client.images.build(path=str(tmp_path), tag="sconify-test-tool:latest", network_mode="none",
                                   buildargs={"BASE_IMAGE": "sconify-test-tool-base:latest"}, rm=True, forcerm=True)
        out = docker_client.containers.run("sconify-test-tool:latest", ["--version"], remove=True, network_disabled=True)
        assert out.decode().split() == ["sconify", sconify.__version__]
        io_dir = tmp_path / "io"
        io_dir.mkdir()
        write_image(read_image(f"oci:{python_image}:latest"), f"oci-archive:{io_dir / 'in.tar'}:demo")
        summary = docker_client.containers.run(
            "sconify-test-tool:latest",
            ["image", "--from", "oci-archive:/io/in.tar:demo", "--to", "oci-archive:/io/out.tar:sconified",
             "--dir", "/app/data", "--manifest-out", "/io/manifest.json", "--session-out", "/io/session.yaml",
             "--keys-out", "/io/keys.json", "--json"],
            remove=True, network_disabled=True, volumes={str(io_dir): {"bind": "/io", "mode": "rw"}},
        )
        manifest = Manifest.read(io_dir / "manifest.json")
        assert json.loads(summary)["mrenclave"] == manifest.measurement.mrenclave
        report = verify_image(f"oci-archive:{io_dir / 'out.tar'}:sconified", manifest, keys=KeysFile.read(io_dir / "keys.json"))
        assert report.ok, [c for c in report.checks if not c.ok]
    finally:
        for tag in ("sconify-test-tool:latest", "sconify-test-tool-base:latest"):
            try:
                docker_client.images.remove(tag, force=True)
            except docker.errors.ImageNotFound:
                pass


def test_a_corrupt_cached_package_is_named_with_the_fix(tmp_path):
    broken = tmp_path / "python3_3.11.2-1+b1_amd64.deb"
    broken.write_bytes(b"!<arch>\nnot really a package")
    with pytest.raises(UsageError, match=r"python3_3\.11\.2-1\+b1_amd64\.deb is not a readable Debian package.*delete it"):
        debimage.read_deb(broken, debimage.DEFAULT_EPOCH)
