"""Issue 24's acceptance, end to end, with the commands a curator and a service provider type
(docs/deploy.md): `sconify-image --generic --sign` pushing to a real registry, `sconify deploy
init` / `add` reading the image's attached, signed manifest, `docker run` of the image the engine
pulled from that registry, the deployment directory mounted read-only.

The image is the Python demo with the app of tests/test_runtime_policy.py (it reports SHA-256
digests of what it sees: ``DB_PASSWORD`` in its environment, ``/app/conf/secret.ini``; it counts
its runs in ``$APP_DATA/count.txt``), converted with ``--allow-args`` (its ``serve`` and ``after``
modes) and a declared volume ``/app/state``. Two versions are published: ``1-generic`` and
``2-generic`` (another heap: another MRENCLAVE).

The fourth point of the acceptance (a manifest whose signature does not verify against the
curator's key: `init` refuses, nothing written) is tests/test_deploy.py:
``test_a_bad_or_missing_signature_is_refused_and_nothing_is_written`` (a manifest file) and
``test_init_reads_the_signed_manifest_attached_in_the_registry`` (the attached attestation).
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
import yaml

from test_attach import write_keys
from test_deploy import assert_no_key_material, sconify
from test_registry import REGISTRY, plain_registry  # noqa: F401 - fixture
from test_runtime_docker import OWN_COPY_LINE, SECRETS
from test_runtime_docker import run as run_container
from test_runtime_policy import (APP, CAT, INI, REFUSED, app_original, expected_ini, mounts, report, sha256,
                                 until_ready, volume_files, volumes)  # noqa: F401 - fixture
from test_runtime_state_docker import etcd, restore, start, wait  # noqa: F401 - fixture

pytestmark = [pytest.mark.docker, pytest.mark.slow,
              pytest.mark.skipif(REGISTRY is None, reason="docker-registry is not installed (.ci/run installs it)")]

VOLUME = "/app/state"  # declared by the curator; not in the demo image
STATE = "/var/lib/sconify"
# every descriptor the launcher (PID 1) holds: where it leads, and what a file or memfd holds
PID1_FDS = ["perl", "-e", 'for (glob "/proc/1/fd/*") { my $to = readlink($_); print "$_ -> $to\\n"; '
            'next if $to =~ /^(pipe|socket|anon_inode):/; open(my $f, "<", $_) or next; local $/; print <$f>; }']
NEW_LINE = f"sconify-run: volume {VOLUME} is new: initialised with the deployment's key\n"


@dataclass
class Version:
    ref: str  # docker://HOST/REPO:TAG: what sconify reads
    image: str  # HOST/REPO@sha256:...: what docker runs
    image_id: str  # the engine's id of what it pulled
    outputs: Path  # the curator's --out-dir


@dataclass
class Curator:
    versions: dict[str, Version]  # "1", "2"
    private_key: Path
    public_key: Path


@pytest.fixture(scope="module")
def curator(python_image, plain_registry, docker_client, engine_images, tmp_path_factory):  # noqa: F811
    """The curator's side: the app converted twice with --generic --sign, pushed to the registry;
    the engine pulls each by digest, as a provider's docker run would."""
    from sconify.image.transports import read_image

    tmp = tmp_path_factory.mktemp("curator")
    name = f"sconify-accept-{uuid.uuid4().hex[:8]}"
    original = app_original(engine_images, python_image)
    key, public = write_keys(tmp, "curator")
    versions: dict[str, Version] = {}
    try:
        for version, extra in (("1", ()), ("2", ("--heap", "128M"))):
            ref = plain_registry.ref(f"{name}:{version}-generic")
            outputs = tmp / f"curator-out-{version}"
            run = sconify("image", "--from", f"docker-daemon:{original}", "--to", ref, "--generic",
                          "--dir", VOLUME, "--allow-args", "--out-dir", str(outputs), "--sign", str(key), *extra)
            assert run.returncode == 0, run.stderr
            image = f"{plain_registry.host}/{name}@{read_image(ref).manifest_digest}"
            versions[version] = Version(ref, image, docker_client.images.pull(image).id, outputs)
        yield Curator(versions, key, public)
    finally:
        for tag in (v.image for v in versions.values()):
            try:
                docker_client.images.remove(tag, force=True)
            except docker.errors.ImageNotFound:
                pass


def init(curator: Curator, directory: Path, name: str, version: str = "1") -> dict:
    """`sconify deploy init` of a deployment with a DB_PASSWORD in its environment and in an
    injected /app/conf/secret.ini; returns its secret values (name -> the value as the service
    gets it: an ascii one as it is, a binary one in hex)."""
    template = directory.parent / f"{directory.name}-secret.ini"
    template.write_text(INI)
    run = sconify("deploy", "init", curator.versions[version].ref, "--name", name, "--signer",
                  str(curator.public_key), "--out", str(directory),
                  "--secret", "DB_PASSWORD:ascii", "--secret", "api_token:binary:16",
                  "--env", "DB_PASSWORD=$$SCONE::DB_PASSWORD$$", "--env", f"APP_DATA={VOLUME}",
                  "--inject", f"/app/conf/secret.ini=@{template}")
    assert run.returncode == 0, run.stderr
    assert "signed: ecdsa" in run.stdout.lower()
    return secret_values(directory)


def secret_values(directory: Path) -> dict[str, str]:
    doc = json.loads((directory / "secrets.json").read_text())["secrets"]
    return {name: entry.get("value") or entry["value_hex"] for name, entry in doc.items()}


def places(policy: Path, data: str, state: str) -> list:
    return mounts(policy, data, state, data_path=VOLUME)


def run(docker_client, version: Version, policy: Path, data: str, state: str, *args: str) -> tuple[int, str, str]:
    return run_container(docker_client, version.image, ["python3", APP, *args], mounts=places(policy, data, state))


def assert_one_line_refusal(result: tuple[int, str, str], words: str) -> None:
    status, out, err = result
    assert status == 2 and out == "" and words in err and err.count("\n") == 1, result


def scan(chunks, values: list[str], what: str) -> None:
    """None of ``values`` in the byte stream ``chunks`` (a docker save, a docker export)."""
    needles = [value.encode() for value in values]
    overlap = max(map(len, needles)) - 1
    tail = b""
    for chunk in chunks:
        window = tail + chunk
        for value in needles:
            assert value not in window, f"a secret value in {what}"
        tail = window[-overlap:]


# --- 1. one image, two deployments, each with its own secrets ---------------------------------------


def test_two_deployments_run_one_image_and_only_the_service_sees_their_secrets(curator, docker_client, volumes,
                                                                               tmp_path):
    v1 = curator.versions["1"]
    a, b = tmp_path / "deployment-a", tmp_path / "deployment-b"
    values = {"a": init(curator, a, "deployment-a"), "b": init(curator, b, "deployment-b")}
    every_value = [value for deployment in values.values() for value in deployment.values()]
    # nothing the curator published is secret, so no policy holds anything of it that is
    assert sorted(p.name for p in v1.outputs.iterdir()) == ["manifest.json", "session.yaml"]
    assert_no_key_material(v1.outputs, v1.ref)
    private = "".join(curator.private_key.read_text().splitlines()[1:-1])
    for path in [*v1.outputs.iterdir(), *a.iterdir(), *b.iterdir()]:
        assert private[:40] not in path.read_text() and private[-40:] not in path.read_text(), path
    for path in v1.outputs.iterdir():
        for value in every_value:
            assert value not in path.read_text(), path
    assert set(values["a"]) == set(values["b"]) == {"DB_PASSWORD", "api_token", "app_state_key"}
    assert all(values["a"][name] != values["b"][name] for name in values["a"])

    data = {"a": volumes("data-a"), "b": volumes("data-b")}
    state = {"a": volumes("state-a"), "b": volumes("state-b")}
    containers = {name: docker_client.containers.run(v1.image, ["python3", APP, "serve"], detach=True,
                                                     network_disabled=True,
                                                     mounts=places(directory, data[name], state[name]))
                  for name, directory in (("a", a), ("b", b))}
    try:
        for name, container in containers.items():
            out, err = until_ready(container)
            assert "ready" in out, err
            seen = report(out)
            assert seen["password"] == sha256(values[name]["DB_PASSWORD"]), err  # the app's os.environ
            assert seen["ini"] == sha256(expected_ini(values[name]))  # the injected file, substituted
            assert seen["count"] == 1 and err == NEW_LINE
            container.reload()
            assert container.attrs["Image"] == v1.image_id  # both: the digest the curator pushed
            assert not any(value in json.dumps(container.attrs) for value in every_value)  # docker inspect
            status, output = container.exec_run(CAT + ["/app/conf/secret.ini"])  # docker exec C cat
            assert status != 0 and b"No such file" in output, output
            status, output = container.exec_run(CAT + ["/proc/1/environ"])  # the launcher's environment
            assert status == 0 and b"PATH=" in output
            assert not any(value.encode() in output for value in every_value)
            status, output = container.exec_run(PID1_FDS)  # nor what it holds open
            assert status == 0 and b"/proc/1/fd/0 -> " in output and b"sconify-grant" not in output, output
            assert not any(value.encode() in output for value in every_value)
            scan(container.export(), every_value, f"deployment {name}'s container file system")
    finally:
        for container in containers.values():
            container.remove(force=True)
    scan(docker_client.images.get(v1.image_id).save(named=False), every_value, "the image's blobs")
    for volume in [*data.values(), *state.values()]:  # the volumes: ciphertext and tags
        scan(volume_files(docker_client, volume).values(), every_value, f"volume {volume}")

    # a volume opens only with its own deployment's policy
    assert_one_line_refusal(run(docker_client, v1, b, data["a"], state["b"]), "belongs to another deployment or key")
    assert_one_line_refusal(run(docker_client, v1, a, data["b"], state["a"]), "belongs to another deployment or key")
    status, out, err = run(docker_client, v1, a, data["a"], state["a"])
    assert status == 0 and report(out)["count"] == 2, err


# --- 2. the versions a policy accepts ------------------------------------------------------------------


def test_a_policy_runs_the_versions_it_lists_and_refuses_another(curator, docker_client, volumes, tmp_path):
    v1, v2 = curator.versions["1"], curator.versions["2"]
    directory = tmp_path / "deployment-c"
    init(curator, directory, "deployment-c", version="2")
    data, state = volumes("data"), volumes("state")
    assert_one_line_refusal(run(docker_client, v1, directory, data, state), REFUSED)
    added = sconify("deploy", "add", v1.ref, str(directory), "--signer", str(curator.public_key))
    assert added.returncode == 0, added.stderr
    assert len(yaml.safe_load((directory / "policy.yaml").read_text())["services"][0]["mrenclaves"]) == 2
    for count, version in ((1, v1), (2, v2), (3, v1)):  # either version, one volume
        status, out, err = run(docker_client, version, directory, data, state)
        assert status == 0 and report(out)["count"] == count, err


# --- 3. secrets read-only, freshness state apart ---------------------------------------------------------


def test_read_only_secrets_a_writing_service_and_a_restored_copy_refused(curator, docker_client, volumes, tmp_path):
    v1 = curator.versions["1"]
    directory = tmp_path / "deployment-d"
    init(curator, directory, "deployment-d")
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    data, state = volumes("data"), volumes("state")
    status, out, err = run(docker_client, v1, directory, data, state)
    assert status == 0 and report(out)["count"] == 1, err
    older = tmp_path / "older"
    shutil.copytree(Path(docker_client.volumes.get(data).attrs["Mountpoint"]), older)
    status, out, err = run(docker_client, v1, directory, data, state)
    assert status == 0 and report(out)["count"] == 2, err  # the writes persist
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before  # the mount was read-only
    record = json.loads(volume_files(docker_client, state)["deployment-d/app_state.json"])
    assert volume_files(docker_client, data)[".sconify.fspf"][-16:].hex() == record["fspf_tag"]
    restore(docker_client, data, older)
    assert_one_line_refusal(run(docker_client, v1, directory, data, state), "rollback")


def test_state_in_etcd_two_containers_committing_from_one_old_tag_one_wins(curator, docker_client, volumes, etcd,
                                                                           tmp_path):
    """As test_runtime_state_docker's race in keys.json mode, with a deployment's policy: two copies
    of one volume (two machines, say) start at the same tag; one commit wins, the other is refused
    and its copy never starts again."""
    v1 = curator.versions["1"]
    directory = tmp_path / "deployment-e"
    init(curator, directory, "deployment-e")
    policy = yaml.safe_load((directory / "policy.yaml").read_text())
    policy["sconify"]["state"] = {"etcd": {"endpoints": [etcd.endpoint], "prefix": "/sconify/deployment-e/"}}
    (directory / "policy.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))  # the user's edit,
    init(curator, directory, "deployment-e")  # settled again as docs/deploy.md says: kept
    assert yaml.safe_load((directory / "policy.yaml").read_text())["sconify"]["state"] == policy["sconify"]["state"]
    copies = [volumes("copy-0"), volumes("copy-1")]
    go = tmp_path / "go"
    go.mkdir()

    def mounted(volume: str, *extra: tuple[str, str]) -> dict:
        return {volume: {"bind": VOLUME, "mode": "rw"}, **{host: {"bind": path, "mode": "ro"} for host, path in extra}}

    status, out, err = wait(start(docker_client, v1.image, ["python3", APP], directory, mounted(copies[0])))
    assert status == 0 and report(out)["count"] == 1, err
    tag = json.loads(etcd.get("/sconify/deployment-e/app_state"))["fspf_tag"]
    shutil.copytree(Path(docker_client.volumes.get(copies[0]).attrs["Mountpoint"]), tmp_path / "copy")
    restore(docker_client, copies[1], tmp_path / "copy")  # the second copy: the same tag
    racers = [start(docker_client, v1.image, ["python3", APP, "after", "/go/go"], directory,
                    mounted(copy, (str(go), "/go"))) for copy in copies]
    for racer in racers:
        out, err = until_ready(racer)
        assert out.startswith("ready"), err  # past the launcher's checks: both at the old tag
    (go / "go").write_text("")
    results = [wait(racer) for racer in racers]
    won = [status == 0 for status, _, _ in results]
    assert sorted(won) == [False, True], results
    loser = results[won.index(False)]
    assert "another writer moved it first" in loser[2] and "this commit is refused" in loser[2], loser
    assert json.loads(etcd.get("/sconify/deployment-e/app_state"))["fspf_tag"] != tag
    # the loser's copy is the old one now: refused at start; the winner's goes on
    for index, copy in enumerate(copies):
        status, out, err = wait(start(docker_client, v1.image, ["python3", APP], directory, mounted(copy)))
        if won[index]:
            assert status == 0 and report(out)["count"] == 3, err
        else:
            assert (status, out) == (2, "") and "rollback" in err and etcd.endpoint in err, err


def test_without_a_volume_mounted_the_writes_go_with_the_container(curator, docker_client, volumes, tmp_path):
    """The container's own copy of a declared volume (no volume mounted there) is kept apart from
    the state store, as a keys file's own copy is (docs/runtime.md, "The container's own copy"): a
    `docker run --rm` that writes records nothing that outlives it, so the next run starts too
    (it was refused: the store recorded a tag for a copy thrown away); `docker restart` finds its
    copy again."""
    v1 = curator.versions["1"]
    directory = tmp_path / "deployment-f"
    init(curator, directory, "deployment-f")
    own_copy_line = OWN_COPY_LINE.replace("/app/data", VOLUME)
    policy = docker.types.Mount(SECRETS, str(directory), type="bind", read_only=True)
    state = volumes("state")
    with_state = [policy, docker.types.Mount(STATE, state, type="volume", no_copy=True)]
    for _ in range(2):
        status, out, err = run_container(docker_client, v1.image, ["python3", APP], mounts=with_state)
        assert (status, report(out)["count"], err) == (0, 1, own_copy_line)
    assert volume_files(docker_client, state) == {}  # nothing of a copy thrown away
    container = docker_client.containers.run(v1.image, ["python3", APP], detach=True, network_disabled=True,
                                             mounts=[policy])  # no state directory either: none needed
    try:
        assert container.wait(timeout=120)["StatusCode"] == 0
        container.start()  # docker restart: the same copy, its tag in the container's state
        assert container.wait(timeout=120)["StatusCode"] == 0, container.logs().decode()
        runs = container.logs(stdout=True, stderr=False).decode().splitlines()
        assert [report(line)["count"] for line in runs] == [1, 2], container.logs().decode()
    finally:
        container.remove(force=True)
    # a volume mounted afterwards is the deployment's, in the store, as before
    data = volumes("data")
    status, out, err = run(docker_client, v1, directory, data, state)
    assert status == 0 and report(out)["count"] == 1, err
    assert list(volume_files(docker_client, state)) == ["deployment-f/app_state.json"]


def test_a_deployment_directory_the_services_user_cannot_read_is_named(curator, docker_client, tmp_path):
    """`sconify deploy init` makes the directory 0700 (secrets.json 0600): a service that runs as
    another user cannot look into it. One line says so, naming the directory; it was "cannot read
    the keys file .../keys.json", a file a deployment does not have."""
    directory = tmp_path / "deployment-g"
    init(curator, directory, "deployment-g")
    policy = docker.types.Mount(SECRETS, str(directory), type="bind", read_only=True)
    result = run_container(docker_client, curator.versions["1"].image, ["python3", APP], mounts=[policy],
                           user="1000:1000")
    assert_one_line_refusal(result, f"cannot look into {SECRETS} (Permission denied)")
    assert "keys.json" in result[2] and "policy.yaml" in result[2] and "uid 1000" in result[2]


def test_a_generic_image_without_a_deployment_says_how_to_make_one(curator, docker_client):
    """Nothing mounted: the one line names the policy and `sconify deploy init` (it asked for the
    keys.json written by sconify-image, which a curator of a generic image never writes)."""
    result = run_container(docker_client, curator.versions["1"].image, ["python3", APP])
    assert_one_line_refusal(result, f"no deployment policy at {SECRETS}/policy.yaml: this is a generic image")
    assert "sconify deploy init IMAGE --name NAME" in result[2] and "keys.json" not in result[2]
