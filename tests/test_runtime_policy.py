"""A converted image run with a deployment's policy (docs/deploy.md, "The runtime with a policy"),
under a real Docker engine.

The Python demo with an app of its own (``/app/policy_app.py``: it reports what it sees as
SHA-256 digests, counts its runs in ``/app/data/count.txt`` and, with ``serve``, waits) is
converted with ``--dir /app/data``. Each test writes a ``policy.yaml`` and a ``secrets.json`` by
hand (``deployment``; ``sconify deploy init`` will write them) into a directory mounted read-only
at ``/run/secrets/sconify``. The data volume is mounted empty (``nocopy``: not the image's copy),
so the launcher initialises it with the deployment's key; the state directory
(``/var/lib/sconify``) is a volume of its own.
"""

from __future__ import annotations

import hashlib
import json
import secrets as random
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
import yaml

from engine_images import convert_into_engine
from test_runtime_docker import SECRETS
from test_runtime_docker import run as run_container

pytestmark = [pytest.mark.docker, pytest.mark.slow]

APP = "/app/policy_app.py"
APP_SOURCE = """\
import errno, hashlib, json, os, sys, time
def digest(data):
    return hashlib.sha256(data).hexdigest()
ini = '/app/conf/secret.ini'
with open(ini, 'rb') as f:
    size = os.fstat(f.fileno()).st_size
try:
    open(ini, 'w')
    write = 'allowed'
except OSError as e:
    write = errno.errorcode[e.errno]
if sys.argv[1:2] == ['after']:  # containers racing to commit: write once the file sys.argv[2] exists
    print('ready', flush=True)
    while not os.path.exists(sys.argv[2]):
        time.sleep(0.02)
count = os.path.join(os.environ.get('APP_DATA', '/app/data'), 'count.txt')
n = int(open(count).read()) if os.path.exists(count) else 0
with open(count, 'w') as f:
    f.write(str(n + 1))
print(json.dumps({
    'password': digest(os.environ.get('DB_PASSWORD', '').encode()),
    'token': os.environ.get('API_TOKEN_HEX_LEN'),
    'ini': digest(open(ini, 'rb').read()),
    'ini_mode': oct(os.stat(ini).st_mode),
    'ini_fstat': size,
    'ini_readable': os.access(ini, os.R_OK), 'ini_writable': os.access(ini, os.W_OK),
    'conf_is_dir': os.path.isdir('/app/conf'),
    'mkdir_conf': (lambda: os.makedirs('/app/conf', exist_ok=True) or 'ok')(),
    'write': write, 'count': n + 1, 'cwd': os.getcwd(), 'argv': sys.argv[1:],
}), flush=True)
if sys.argv[1:] == ['serve']:
    print('ready', flush=True)
    time.sleep(300)
"""
INI = "[db]\npassword = $$SCONE::DB_PASSWORD$$\ntoken = $$SCONE::api_token:hex$$\n"
REFUSED = "not a measurement this policy accepts"
CAT = ["perl", "-e", 'open(my $f, "<", $ARGV[0]) or die "$!\\n"; print <$f>;']


@dataclass
class App:
    original: str  # the app's image before conversion
    tag: str
    mrenclave: str
    executable_sha256: str
    runtime_config_sha256: str
    command: str  # the session's command: what the measured executable runs with


def app_original(engine_images, python_image) -> str:
    """The Python demo with APP as its command (shared with tests/test_generic_acceptance.py)."""
    return engine_images.derived(engine_images.loaded(f"oci:{python_image}:latest"),
                                 {APP: (APP_SOURCE.encode(), 0o644)}, cmd=["python3", APP])


@pytest.fixture(scope="module")
def app(python_image, engine_images) -> App:
    converted = engine_images.converted(app_original(engine_images, python_image), "--dir", "/app/data")
    keys = json.loads((converted.out / "keys.json").read_text())
    session = yaml.safe_load((converted.out / "session.yaml").read_text())
    return App(converted.original, converted.tag, keys["mrenclave"], keys["executable_sha256"],
               keys["runtime_config_sha256"], session["services"][0]["command"])


def deployment(app: App, directory: Path, name: str, mrenclaves: list[str] | None = None,
               secret_values: dict | None = None, command: str | None = None) -> dict:
    """Write DIR/policy.yaml and DIR/secrets.json for deployment NAME of the app (what `sconify
    deploy init` will write); returns the secret values. mrenclaves: the versions it accepts
    (default: the app's), each with a measurements entry; command: the service's (default: the
    image's, @@1)."""
    directory.mkdir(parents=True)
    directory.chmod(0o755)
    values = secret_values or {"DB_PASSWORD": random.token_urlsafe(18), "api_token": random.token_hex(16),
                               "app_data_key": random.token_hex(32)}
    accepted = mrenclaves or [app.mrenclave]
    policy = {
        "name": name, "version": "0.3",
        "services": [{
            "name": "python", "image_name": "app", "mrenclaves": accepted,
            "command": command or f"{app.command} @@1",
            "environment": {"LANG": "C.UTF-8", "DB_PASSWORD": "$$SCONE::DB_PASSWORD$$",
                            "API_TOKEN_HEX_LEN": "$$SCONE::api_token:hex$$"},
            "pwd": "/app/data",
            "volumes": [{"name": "app_data", "path": "/app/data"}],
        }],
        "images": [{"name": "app", "injection_files": [{"path": "/app/conf/secret.ini", "content": INI}],
                    "volumes": [{"name": "app_data", "path": "/app/data"}]}],
        "volumes": [{"name": "app_data", "fspf_path": "/app/data/.sconify.fspf",
                     "fspf_key": "$$SCONE::app_data_key:hex$$"}],
        "secrets": [{"name": "DB_PASSWORD", "kind": "ascii", "size": 24},
                    {"name": "api_token", "kind": "binary", "size": 16},
                    {"name": "app_data_key", "kind": "binary", "size": 32, "export_public": False}],
        "sconify": {"measurements": [{"mrenclave": mr, "executable_sha256": app.executable_sha256,
                                      "runtime_config_sha256": app.runtime_config_sha256} for mr in accepted]},
    }
    (directory / "policy.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
    (directory / "secrets.json").write_text(json.dumps({
        "schema": "sconify.secrets/v1", "policy": name,
        "secrets": {"DB_PASSWORD": {"kind": "ascii", "value": values["DB_PASSWORD"]},
                    "api_token": {"kind": "binary", "value_hex": values["api_token"]},
                    "app_data_key": {"kind": "binary", "value_hex": values["app_data_key"]}}}))
    (directory / "secrets.json").chmod(0o644)  # the container's user reads it; the mount is read-only
    return values


@pytest.fixture
def volumes(docker_client):
    """name -> a new named volume (removed at the end)."""
    made = []

    def make(label: str) -> str:
        name = f"sconify-rt-policy-{label}-{uuid.uuid4().hex[:6]}"
        docker_client.volumes.create(name)
        made.append(name)
        return name

    yield make
    for name in made:
        docker_client.volumes.get(name).remove(force=True)


def mounts(policy_dir: Path, data: str, state: str, data_path: str = "/app/data") -> list:
    return [docker.types.Mount(SECRETS, str(policy_dir), type="bind", read_only=True),
            docker.types.Mount(data_path, data, type="volume", no_copy=True),
            docker.types.Mount("/var/lib/sconify", state, type="volume", no_copy=True)]


def run(docker_client, app: App, policy_dir: Path, data: str, state: str, *args: str) -> tuple[int, str, str]:
    return run_container(docker_client, app.tag, ["python3", APP, *args], mounts=mounts(policy_dir, data, state))


def until_ready(container, timeout: float = 120) -> tuple[str, str]:
    """Wait until the service in ``container`` (started detached) prints ``ready`` or exits;
    returns its stdout and stderr so far."""
    deadline = time.monotonic() + timeout
    while b"ready" not in container.logs(stdout=True, stderr=False) and time.monotonic() < deadline:
        container.reload()
        if container.status == "exited":
            break
        time.sleep(0.2)
    return container.logs(stdout=True, stderr=False).decode(), container.logs(stdout=False, stderr=True).decode()


def report(out: str) -> dict:
    return json.loads(out.splitlines()[0])


def expected_ini(values: dict) -> str:
    return INI.replace("$$SCONE::DB_PASSWORD$$", values["DB_PASSWORD"]).replace("$$SCONE::api_token:hex$$",
                                                                               values["api_token"])


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_the_service_sees_its_secrets_and_nobody_else_does(app, docker_client, volumes, tmp_path):
    values = deployment(app, tmp_path / "a", "deployment-a")
    container = docker_client.containers.run(app.tag, ["python3", APP, "serve"], detach=True, network_disabled=True,
                                             mounts=mounts(tmp_path / "a", volumes("data"), volumes("state")))
    try:
        out, err = until_ready(container)
        assert "ready" in out, err
        seen = report(out)
        # the measured service: its environment and the injected file, secrets substituted
        assert seen["password"] == sha256(values["DB_PASSWORD"]), err
        assert seen["token"] == values["api_token"]
        assert seen["ini"] == sha256(expected_ini(values))
        assert seen["ini_mode"] == "0o100444" and seen["ini_fstat"] == len(expected_ini(values))
        assert seen["ini_readable"] and not seen["ini_writable"]
        assert seen["write"] == "EROFS" and seen["conf_is_dir"]  # /app/conf is not on disk
        assert seen["mkdir_conf"] == "ok"  # EEXIST: it is there (and stays off the disk)
        assert seen["cwd"] == "/app/data" and seen["argv"] == ["serve"] and seen["count"] == 1
        assert err == "sconify-run: volume /app/data is new: initialised with the deployment's key\n"
        # nobody else: the engine's view, another process, the launcher's own environment
        container.reload()
        assert values["DB_PASSWORD"] not in json.dumps(container.attrs)
        for path in ("/app/conf/secret.ini", "/app/conf"):  # `cat`: the image has perl, not coreutils
            status, output = container.exec_run(CAT + [path])
            assert status != 0 and b"No such file" in output, output
        status, output = container.exec_run(CAT + ["/proc/1/environ"])
        assert status == 0 and b"LANG" in output
        assert values["DB_PASSWORD"].encode() not in output and values["api_token"].encode() not in output
        status, output = container.exec_run(["python3", "-c", "print(open('/app/conf/secret.ini').read())"])
        assert status != 0 and b"FileNotFoundError" in output  # the measured executable, without the grant
    finally:
        container.remove(force=True)
    stored = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != "secrets.json")
    assert values["DB_PASSWORD"].encode() not in stored


def test_a_policy_without_the_measurement_is_refused(app, docker_client, volumes, tmp_path):
    deployment(app, tmp_path / "a", "deployment-a", mrenclaves=["ab" * 32])
    status, out, err = run(docker_client, app, tmp_path / "a", volumes("data"), volumes("state"))
    assert status == 2 and out == "" and REFUSED in err and err.count("\n") == 1, err


def test_a_policy_accepting_two_versions_runs(app, docker_client, volumes, tmp_path):
    deployment(app, tmp_path / "a", "deployment-a", mrenclaves=["ab" * 32, app.mrenclave])
    status, out, err = run(docker_client, app, tmp_path / "a", volumes("data"), volumes("state"))
    assert status == 0 and report(out)["count"] == 1, err


def test_a_missing_secret_is_refused_by_name(app, docker_client, volumes, tmp_path):
    values = deployment(app, tmp_path / "a", "deployment-a")
    doc = json.loads((tmp_path / "a" / "secrets.json").read_text())
    del doc["secrets"]["api_token"]
    (tmp_path / "a" / "secrets.json").write_text(json.dumps(doc))
    status, out, err = run(docker_client, app, tmp_path / "a", volumes("data"), volumes("state"))
    assert status == 2 and out == "" and "api_token" in err and err.count("\n") == 1, err
    assert values["DB_PASSWORD"] not in err and values["app_data_key"] not in err


def test_the_volume_persists_across_runs(app, docker_client, volumes, tmp_path):
    deployment(app, tmp_path / "a", "deployment-a")
    data, state = volumes("data"), volumes("state")
    for count in (1, 2, 3):
        status, out, err = run(docker_client, app, tmp_path / "a", data, state)
        assert status == 0 and report(out)["count"] == count, err
    files = volume_files(docker_client, data)
    assert ".sconify.fspf" in files and b"3" != files.get("count.txt") and len(files["count.txt"]) > 16
    assert (tmp_path / "a" / "policy.yaml").is_file() and sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "policy.yaml", "secrets.json"]  # the read-only mount got nothing


def volume_files(docker_client, name: str) -> dict[str, bytes]:
    mountpoint = Path(docker_client.volumes.get(name).attrs["Mountpoint"])
    return {str(p.relative_to(mountpoint)): p.read_bytes() for p in mountpoint.rglob("*") if p.is_file()}


def test_a_volume_of_another_deployment_is_refused(app, docker_client, volumes, tmp_path):
    deployment(app, tmp_path / "a", "deployment-a")
    deployment(app, tmp_path / "b", "deployment-b")
    data_a, data_b = volumes("data-a"), volumes("data-b")
    state_a, state_b = volumes("state-a"), volumes("state-b")
    assert run(docker_client, app, tmp_path / "a", data_a, state_a)[0] == 0
    assert run(docker_client, app, tmp_path / "b", data_b, state_b)[0] == 0
    for policy, data, state in ((tmp_path / "b", data_a, state_b), (tmp_path / "a", data_b, state_a)):
        status, out, err = run(docker_client, app, policy, data, state)
        assert status == 2 and out == "" and "belongs to another deployment or key" in err, err
        assert err.count("\n") == 1
    # each still runs on its own
    assert report(run(docker_client, app, tmp_path / "a", data_a, state_a)[1])["count"] == 2


def test_an_older_copy_of_the_volume_is_refused(app, docker_client, volumes, tmp_path):
    deployment(app, tmp_path / "a", "deployment-a")
    data, state = volumes("data"), volumes("state")
    assert run(docker_client, app, tmp_path / "a", data, state)[0] == 0
    mountpoint = Path(docker_client.volumes.get(data).attrs["Mountpoint"])
    older = volume_files(docker_client, data)
    assert run(docker_client, app, tmp_path / "a", data, state)[0] == 0
    for name, content in older.items():  # the copy of the first run put back
        (mountpoint / name).write_bytes(content)
    status, out, err = run(docker_client, app, tmp_path / "a", data, state)
    assert status == 2 and out == "" and "rollback" in err and err.count("\n") == 1, err


def test_another_command_gets_no_secrets(app, docker_client, volumes, tmp_path):
    values = deployment(app, tmp_path / "a", "deployment-a")
    code = ("import os\nprint(os.environ.get('DB_PASSWORD'), os.path.exists('/app/conf/secret.ini'))\n"
            "print(open('/app/data/count.txt').read())\n")
    status, out, err = run_container(docker_client, app.tag, ["python3", "-c", code],
                                     mounts=mounts(tmp_path / "a", volumes("data"), volumes("state")))
    assert out.startswith("None False\n") and status == 1, (out, err)  # then no volume: nothing initialised
    assert "runs without them" in err and values["DB_PASSWORD"] not in err + out


def test_the_policy_may_give_its_own_command(app, docker_client, volumes, tmp_path):
    values = deployment(app, tmp_path / "a", "deployment-a",
                        command=f"{app.command} 'from the policy' $$SCONE::api_token:hex$$ @@1")
    status, out, err = run(docker_client, app, tmp_path / "a", volumes("data"), volumes("state"), "from the host")
    assert status == 0, err
    assert report(out)["argv"] == ["from the policy", values["api_token"], "from the host"]
    deployment(app, tmp_path / "b", "deployment-b", command=app.command)  # no @@1: the host may not add any
    status, out, err = run(docker_client, app, tmp_path / "b", volumes("data"), volumes("state"), "from the host")
    assert "runs without them" in err and status != 0, (out, err)


def test_a_mounted_volume_needs_a_mounted_state_directory(app, docker_client, volumes, tmp_path):
    deployment(app, tmp_path / "a", "deployment-a")
    status, out, err = run_container(docker_client, app.tag, ["python3", APP],
                                     mounts=mounts(tmp_path / "a", volumes("data"), volumes("state"))[:2])
    # (the state store refuses a state directory that is not there; one that is the container's own
    # copy while a volume is mounted is refused too: tests/test_runtime_state_docker.py)
    assert status == 2 and "the policy's (sconify.state) state store" in err and "/var/lib/sconify" in err, err
    assert "mount a volume there" in err


def test_injection_files_larger_than_the_grant_are_refused(app, docker_client, volumes, tmp_path):
    deployment(app, tmp_path / "a", "deployment-a")
    policy = yaml.safe_load((tmp_path / "a" / "policy.yaml").read_text())
    policy["images"][0]["injection_files"].append({"path": "/app/conf/big.txt", "content": "x" * (1 << 20)})
    (tmp_path / "a" / "policy.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
    status, out, err = run(docker_client, app, tmp_path / "a", volumes("data"), volumes("state"))
    assert status == 2 and "more than the 1048576 the shield reads" in err, err


def test_sconify_policy_names_another_directory(app, docker_client, volumes, tmp_path):
    values = deployment(app, tmp_path / "a", "deployment-a")
    elsewhere = [docker.types.Mount("/etc/deployment", str(tmp_path / "a"), type="bind", read_only=True),
                 *mounts(tmp_path / "a", volumes("data"), volumes("state"))[1:]]
    status, out, err = run_container(docker_client, app.tag, ["python3", APP], mounts=elsewhere,
                                     environment={"SCONIFY_POLICY": "/etc/deployment"})
    assert status == 0 and report(out)["password"] == sha256(values["DB_PASSWORD"]), err
    status, out, err = run_container(docker_client, app.tag, ["python3", APP], mounts=elsewhere,
                                     environment={"SCONIFY_POLICY": "/etc/nothing"})
    assert status == 2 and "SCONIFY_POLICY names /etc/nothing, which holds no policy.yaml" in err, err


def test_a_generic_image_runs_with_the_policy_sconify_deploy_init_writes(app, docker_client, volumes, tmp_path):
    """The whole issue 24 flow: the curator's --generic conversion (no keys), the provider's
    `sconify deploy init` (policy.yaml, secrets.json), `docker run` with them read-only."""
    tag = f"sconify-rt-policy-{uuid.uuid4().hex[:8]}:generic"
    convert_into_engine(f"docker-daemon:{app.original}", tag, tmp_path / "curator", "--generic", "--dir", "/app/state")
    try:
        assert not (tmp_path / "curator" / "keys.json").exists()
        (tmp_path / "secret.ini").write_text(INI)
        result = subprocess.run(
            [sys.executable, "-m", "sconify", "deploy", "init", f"docker-daemon:{tag}", "--name", "shop-a",
             "--manifest", str(tmp_path / "curator" / "manifest.json"), "--out", str(tmp_path / "shop-a"),
             "--secret", "DB_PASSWORD:ascii", "--secret", "api_token:binary:16",
             "--env", "DB_PASSWORD=$$SCONE::DB_PASSWORD$$", "--env", "APP_DATA=/app/state",
             "--inject", f"/app/conf/secret.ini=@{tmp_path / 'secret.ini'}"],
            capture_output=True, text=True, timeout=300, check=False)
        assert result.returncode == 0, result.stderr
        values = json.loads((tmp_path / "shop-a" / "secrets.json").read_text())["secrets"]
        assert (tmp_path / "shop-a" / "secrets.json").stat().st_mode & 0o777 == 0o600  # as init wrote it
        data, state = volumes("data"), volumes("state")
        places = [docker.types.Mount(SECRETS, str(tmp_path / "shop-a"), type="bind", read_only=True),
                  docker.types.Mount("/app/state", data, type="volume"),
                  docker.types.Mount("/var/lib/sconify", state, type="volume")]
        for count in (1, 2):
            status, out, err = run_container(docker_client, tag, None, mounts=places)
            assert status == 0 and report(out)["count"] == count, err
        seen = report(out)
        password = values["DB_PASSWORD"]["value"]
        assert seen["password"] == sha256(password)
        assert seen["ini"] == sha256(expected_ini({"DB_PASSWORD": password, "api_token": values["api_token"]["value_hex"]}))
        assert ".sconify.fspf" in volume_files(docker_client, data)
    finally:
        docker_client.images.remove(tag, force=True)
