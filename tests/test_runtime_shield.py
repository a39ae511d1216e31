"""The runtime on this machine, without Docker: sconify-run and the shield around a real CPython.

A copy of the host's python3.11 gets an embedfs of a small package under a path that does not
exist on disk, and a volume (its own fspf, encrypted or authenticated) built with the Python
fspf API. Then the launcher checks the measurement and the volumes, and the shield serves the
embedded code and the volume's plaintext to that python only.
"""

from __future__ import annotations

import _ctypes
import ast
import errno
import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from embedfs.archive import directory_entries, pack
from embedfs.elf import inject
from embedfs.measure import measure_elf
from sconify.fspf import Fspf, Shield
from sconify.conversion.runtime import build_runtime

from fidelity_scripts import NODE_WRITES, PYTHON_FILE_OPS, PYTHON_LINK_OPS

REAL_PYTHON = Path(os.path.realpath(shutil.which("python3.11") or "/usr/bin/python3.11"))
EMBEDDED_ROOT = "/opt/sconify-shield-test"  # exists only inside the embedfs
# The measured command of these tests: a driver script in the embedfs that runs the code it is
# given as its first argument (recorded with allow_args, as --allow-args records it). The keys
# are granted to it only; `python -c` runs without them (test_policy_*).
DRIVER = EMBEDDED_ROOT + "/driver.py"
DRIVER_SOURCE = (
    "import sys\n"
    "code = sys.argv[1]\n"
    "del sys.argv[1]\n"
    "exec(compile(code, '<test>', 'exec'), {'__name__': '__main__'})\n"
)
# The same for a node injected in place of python: `node driver.js CODE ARGS` runs CODE with
# process.argv as `node FILE ARGS` has it.
NODE_DRIVER = EMBEDDED_ROOT + "/driver.js"
NODE_DRIVER_SOURCE = "const code = process.argv[2];\nprocess.argv.splice(2, 1);\neval(code);\n"

pytestmark = pytest.mark.skipif(not REAL_PYTHON.is_file(), reason="needs a python3.11 ELF executable")


@pytest.fixture(scope="module")
def runtime():
    return build_runtime()


class World:
    """An injected python, its runtime config, a volume and its keys file, in one directory."""

    def __init__(self, root: Path, runtime, protection: str = "encrypted", executable: Path = REAL_PYTHON,
                 embed: dict[str, str | bytes] | None = None):
        self.root = root
        self.runtime = runtime
        self.code_roots: list[str] = []  # runtime config "code_roots" and "code_left"
        self.code_left: list[str] = []
        self.code_shallow: list[str] = []
        for path, text in (embed or {}).items():  # more embedded files, at absolute paths
            (root / "tree" / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            (root / "tree" / path.lstrip("/")).write_bytes(text if isinstance(text, bytes) else text.encode())
        tree = root / "tree" / EMBEDDED_ROOT.lstrip("/")
        (tree / "pkg").mkdir(parents=True)
        (tree / "pkg" / "__init__.py").write_text("NAME = 'embedded package'\n")
        (tree / "pkg" / "mod.py").write_text("import os\nX = 'embedded module'\nHERE = sorted(os.listdir(os.path.dirname(__file__)))\n")
        (tree / "alias.py").symlink_to("pkg/mod.py")
        (tree / "driver.py").write_text(DRIVER_SOURCE)
        self.driver = NODE_DRIVER if executable.name.startswith("node") else DRIVER
        if self.driver == NODE_DRIVER:
            (tree / "driver.js").write_text(NODE_DRIVER_SOURCE)
        with (root / "archive").open("wb") as out:
            pack(directory_entries(root / "tree"), out)
        self.python = root / "python"
        inject(executable, root / "archive", self.python)  # named python, whatever it is
        self.python.chmod(0o755)
        measurement = measure_elf(self.python)
        self.archive_offset = self.python.stat().st_size - (root / "archive").stat().st_size - 300
        file_sha256 = hashlib.sha256(self.python.read_bytes()).hexdigest()
        self.volume = root / "volume"
        self.fspf_path = self.volume / ".sconify.fspf"
        plain = root / "plain"
        (plain / "sub").mkdir(parents=True)
        (plain / "count.txt").write_text("0\n")
        (plain / "sub" / "blob.bin").write_bytes(os.urandom(200_000))
        self.blob = (plain / "sub" / "blob.bin").read_bytes()
        fspf = Fspf.create()
        fspf.add_region(str(self.volume), kind="kernel", protection=protection)
        self.volume.mkdir()
        fspf.add_directory(str(self.volume), plain, self.volume if protection == "encrypted" else None)
        if protection == "authenticated":
            shutil.copytree(plain, self.volume, dirs_exist_ok=True)
        key, tag = fspf.encrypt_to(str(self.fspf_path))
        self.key = key
        parameters = {k: measurement.parameters[k] for k in ("heap_size", "stack_size", "threads", "ssa_frame_size")}
        volume = {"path": str(self.volume), "fspf_path": str(self.fspf_path), "protection": protection}
        self.tmp = root / "tmp"  # an ephemeral region, as /tmp in an image
        self.tmp.mkdir()
        self.config = root / "runtime.json"
        self.keys = root / "secrets" / "keys.json"
        self.keys.parent.mkdir()
        self.keys.write_text(json.dumps({
            "schema": "sconify.keys/v2", "session": "test", "mrenclave": measurement.mrenclave,
            "executable_sha256": file_sha256,
            "volumes": [{**volume, "fspf_key": key.hex(), "fspf_tag": tag.hex()}],
        }))
        self.policy = {"command": [str(self.python), self.driver], "service_command": [str(self.python), self.driver],
                       "environment": {"PATH": os.environ["PATH"]}, "allow_args": True, "allow_env": []}
        self.write_config(parameters, measurement.mrenclave, file_sha256, [volume], [str(self.tmp)])

    def write_config(self, parameters, mrenclave, file_sha256, volumes, ephemeral) -> None:
        """The runtime config, and its SHA-256 in the keys file (as sconify-image binds them)."""
        self._config = (parameters, mrenclave, file_sha256, volumes)
        self.config.write_text(json.dumps({
            "schema": "sconify.runtime/v1", "executable": str(self.python), "measurement": parameters,
            "mrenclave": mrenclave, "executable_sha256": file_sha256, "volumes": volumes, "ephemeral": ephemeral,
            "code_roots": self.code_roots, "code_left": self.code_left, "code_shallow": self.code_shallow,
            "code_extensions": [".py", ".pyc", ".pth", ".so"],
            "policy": self.policy,
        }))
        keys = json.loads(self.keys.read_text())
        keys["runtime_config_sha256"] = hashlib.sha256(self.config.read_bytes()).hexdigest()
        self.keys.write_text(json.dumps(keys))

    def seal(self, roots: list[str], left: list[str] = (), shallow: list[str] = ()) -> None:
        self.code_roots, self.code_left, self.code_shallow = list(roots), list(left), list(shallow)
        self.write_config(*self._config, json.loads(self.config.read_text())["ephemeral"])

    def set_ephemeral(self, *paths: Path) -> None:
        self.write_config(*self._config, [str(p) for p in paths])

    def tag(self) -> str:
        return json.loads(self.keys.read_text())["volumes"][0]["fspf_tag"]

    def run(self, *argv: str, env: dict | None = None, check: bool = True, pid1: bool = False,
            under: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        # This machine's /tmp is no container's own copy: freshness in the keys file, as for a
        # mounted volume, unless a test sets SCONIFY_FRESHNESS itself (None: detected).
        # pid1: the launcher as PID 1 of a new PID namespace, as in a container (it owns the
        # volume files' shared plaintext cache); else it execs the command. under: a command
        # the launcher runs under (strace ...).
        environment = {"PATH": os.environ["PATH"], "SCONIFY_RUNTIME_CONFIG": str(self.config),
                       "SCONIFY_KEYS": str(self.keys), "SCONIFY_FRESHNESS": "keys", **(env or {})}
        environment = {name: value for name, value in environment.items() if value is not None}
        wrap = [*under, *(["unshare", "--pid", "--fork", "--mount-proc"] if pid1 else [])]
        result = subprocess.run([*wrap, str(self.runtime.launcher), *argv], capture_output=True, text=True,
                                env=environment, cwd=self.root, timeout=60)
        if check:
            assert result.returncode == 0, result.stderr
        return result

    def python_code(self, code: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
        """Run code (with args) through the measured driver (the recorded command, so it gets
        the keys); for an injected node, JavaScript through its driver."""
        return self.run(str(self.python), self.driver, code, *args, **kwargs)


@pytest.fixture
def world(tmp_path, runtime) -> World:
    return World(tmp_path, runtime)


def test_embedded_code_is_served_at_its_paths(world):
    out = world.python_code(
        "import sys, os; sys.path.insert(0, %r)\n"
        "import pkg, pkg.mod, alias\n"
        "print(pkg.NAME, pkg.mod.X, alias.X, pkg.mod.HERE)\n"
        "print(os.path.isdir(%r), sorted(os.listdir(%r)), os.path.realpath(%r))\n"
        "print(open(%r).read().splitlines()[1])" % (
            EMBEDDED_ROOT, EMBEDDED_ROOT + "/pkg", EMBEDDED_ROOT, EMBEDDED_ROOT + "/alias.py",
            EMBEDDED_ROOT + "/pkg/mod.py")
    ).stdout.splitlines()
    assert out[0] == "embedded package embedded module embedded module ['__init__.py', 'mod.py']"
    assert out[1] == f"True ['alias.py', 'driver.py', 'pkg'] {EMBEDDED_ROOT}/pkg/mod.py"
    assert out[2] == "X = 'embedded module'"
    assert not Path(EMBEDDED_ROOT).exists()  # only the measured process sees it


def test_embedded_files_are_read_only(world):
    out = world.python_code(
        "import errno\n"
        "try:\n open(%r, 'w')\nexcept OSError as e: print(errno.errorcode[e.errno])" % (EMBEDDED_ROOT + "/pkg/mod.py")
    ).stdout
    assert out.strip() == "EROFS"


def test_another_program_gets_no_shield(world):
    result = world.run("sh", "-c", f"od -An -tx1 {world.volume / 'count.txt'}")
    assert bytes.fromhex(result.stdout.replace(" ", "").replace("\n", "")) == (world.volume / "count.txt").read_bytes()
    assert len((world.volume / "count.txt").read_bytes()) == 2 + 16  # ciphertext and tag, not the plaintext
    assert world.run("ls", "-a", str(world.volume)).stdout.split() == [".", "..", ".sconify.fspf", "count.txt", "sub"]


def test_volume_reads_plaintext_and_writes_ciphertext(world):
    code = (
        "import hashlib, os\n"
        "p = %r\n"
        "n = int(open(p).read())\n"
        "with open(p, 'w') as f: f.write('%%d\\n' %% (n + 1))\n"
        "print(n + 1, os.path.getsize(p), sorted(os.listdir(os.path.dirname(p))),"
        " hashlib.sha256(open(%r, 'rb').read()).hexdigest())" % (str(world.volume / "count.txt"),
                                                                  str(world.volume / "sub" / "blob.bin"))
    )
    tags = {world.tag()}
    for expected in (1, 2, 3):
        out = world.python_code(code).stdout.split()
        assert out[:3] == [str(expected), "2", "['count.txt',"] and out[4] == hashlib.sha256(world.blob).hexdigest()
        stored = (world.volume / "count.txt").read_bytes()
        assert not stored.startswith(str(expected).encode() + b"\n") and len(stored) == 2 + 16
        tags.add(world.tag())
    assert len(tags) == 4  # every write recorded a new tag
    assert "fspf_tag_next" not in world.keys.read_text()
    # The Python shield reads what the C runtime wrote, with the recorded tag.
    shield = Shield(world.fspf_path, world.key, bytes.fromhex(world.tag()), root="/")
    assert shield.read(str(world.volume / "count.txt")) == b"3\n"


def test_new_files_rename_and_unlink(world):
    world.python_code(
        "import os\n"
        "d = %r\n"
        "with open(d + '/tmp.json', 'w') as f: f.write('{\"a\": 1}')\n"
        "os.replace(d + '/tmp.json', d + '/state.json')\n"
        "os.unlink(d + '/count.txt')\n"
        "os.mkdir(d + '/new')\n"
        "with open(d + '/new/x', 'wb') as f: f.write(b'x' * 100000); f.flush(); os.fsync(f.fileno())\n" % str(world.volume)
    )
    shield = Shield(world.fspf_path, world.key, bytes.fromhex(world.tag()), root="/")
    assert shield.read(str(world.volume / "state.json")) == b'{"a": 1}'
    assert shield.read(str(world.volume / "new" / "x")) == b"x" * 100000
    names = sorted(p.name for p in world.volume.iterdir())
    assert names == [".sconify.fspf", ".sconify.lock", "new", "state.json", "sub"]  # the commits' lock (empty)
    assert (world.volume / ".sconify.lock").stat().st_size == 0
    stored = [str(p) for p in world.volume.rglob("*") if p.is_file() and p.name not in (".sconify.fspf", ".sconify.lock")]
    assert not shield.verify_all(present=stored).problems


DURABILITY = """import os, sys
d = sys.argv[1]
def mark(n):  # a write(-1, "sconify-test-mark-N") in the trace (EBADF), a syscall the shield does not make
    try: os.write(-1, b'sconify-test-mark-%d' % n)
    except OSError: pass
mark(1)
with open(d + '/a.txt', 'w') as f: f.write('closed, not synced')
os.replace(d + '/a.txt', d + '/b.txt')
mark(2)
fd = os.open(d + '/c.txt', os.O_WRONLY | os.O_CREAT, 0o600)
os.write(fd, b'synced')
os.fsync(fd)
mark(3)
os.close(fd)
dirfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
os.unlink(d + '/b.txt')
os.fsync(dirfd)
mark(4)
"""


@pytest.mark.skipif(not shutil.which("strace"), reason="needs strace")
def test_commits_are_durable_at_the_services_fsync_not_at_every_close(world):
    # docs/runtime.md "Durability": a close, a rename, an unlink commit without fsync (the kernel
    # keeps them when the service is killed); the service's fsync of a file, or of a directory in
    # the volume (SQLite fsyncs the journal's directory), flushes the volume's file system and
    # records the tag durably: what an fsync promises on a local disk.
    trace = world.root / "trace"
    world.run(str(world.python), world.driver, DURABILITY, str(world.volume),
              under=("strace", "-f", "-qq", "-o", str(trace), "-e", "trace=fsync,fdatasync,syncfs,write"))
    calls = trace.read_text().splitlines()
    phases, phase = {1: [], 2: [], 3: [], 4: []}, 0
    for line in calls:
        mark = re.search(r"sconify-test-mark-(\d)", line)
        if mark:
            phase = int(mark.group(1))
        elif phase in phases and re.search(r"\b(fsync|fdatasync|syncfs)\(", line):
            phases[phase].append(line.split(None, 1)[1])
    assert phases[1] == [], phases[1]  # write, close, rename: nothing synced
    # The file's fsync, the process's first: the volume's file system flushed (the fspf it started
    # from holds commits it cannot name), then the fspf and the tag's record.
    assert phases[2][0].startswith("syncfs("), phases[2]
    assert sum(c.startswith("fsync(") for c in phases[2]) >= 2, phases[2]
    # The directory's fsync after an unlink: only this process's commits since, each fsynced by
    # name (the unlinked file's directory, the fspf and its directory, the record and its
    # directory), not the whole file system.
    assert not any(c.startswith("syncfs(") for c in phases[3]) and len(phases[3]) >= 5, phases[3]
    shield = Shield(world.fspf_path, world.key, bytes.fromhex(world.tag()), root="/")
    assert shield.read(str(world.volume / "c.txt")) == b"synced"
    assert not (world.volume / "b.txt").exists()
    assert world.fspf_path.read_bytes()[-16:].hex() == world.tag()  # the keys record the fspf on disk


DIRECTORY_RENAME = """import os, sys
d = sys.argv[1]
if sys.argv[2] == 'write':
    os.makedirs(d + '/x/sub')
    open(d + '/x/a.txt', 'w').write('file a')
    open(d + '/x/sub/b.txt', 'w').write('file b, one level down')
    os.symlink('a.txt', d + '/x/link')
    os.makedirs(d + '/z')  # an empty directory a rename may replace
    os.rename(d + '/x', d + '/y')
    os.rename(d + '/y', d + '/z')
print(sorted(os.listdir(d)), open(d + '/z/a.txt').read(), open(d + '/z/sub/b.txt').read(),
      os.readlink(d + '/z/link'), open(d + '/z/link').read(), os.path.exists(d + '/x/a.txt'))
"""


def test_a_directory_renamed_in_a_volume_keeps_its_files(world):
    # The kernel moves the directory; each file recorded below it is protected again under its
    # new path (the path is bound into its chunks). Before, the files were lost (refused as
    # never recorded at the new path, missing at the old one).
    d = str(world.volume / "moved")
    expected = "['z'] file a file b, one level down a.txt file a False\n"
    first = world.python_code("import os, sys\nos.makedirs(sys.argv[1])\n" + DIRECTORY_RENAME, d, "write",
                              env={"SCONIFY_LOG": "stderr"})
    assert first.stdout == expected and "sconify-shield" not in first.stderr, first.stderr
    again = world.python_code(DIRECTORY_RENAME, d, "read", env={"SCONIFY_LOG": "stderr"})
    assert again.stdout == expected and "sconify-shield" not in again.stderr, again.stderr
    assert b"file b" not in (world.volume / "moved" / "z" / "sub" / "b.txt").read_bytes()


@pytest.mark.skipif(not shutil.which("strace"), reason="needs strace")
def test_a_commit_killed_between_its_renames_is_completed_at_the_next_start(world):
    # A commit renames the new stored file, then the new fspf: a kill in between (strace kills the
    # service at its third rename: the keys file's first phase, the stored file, then the fspf)
    # left the new ciphertext under the old fspf, and the file unreadable (EIO). The next start
    # finds the commit's temp fspf, which the keys name as next, and completes the commit.
    killed = world.run(str(world.python), world.driver, "import sys\nopen(sys.argv[1] + '/count.txt', 'w').write('1')\n",
                       str(world.volume), check=False,
                       under=("strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=rename",
                              "-e", "inject=rename:error=EIO:signal=SIGKILL:when=3"))
    assert killed.returncode == -9 and "fspf_tag_next" in world.keys.read_text()
    assert any(p.name.startswith(".sconify.fspf.sconify-tmp.") for p in world.volume.iterdir())
    again = world.python_code(READ_COUNT % str(world.volume / "count.txt"), env={"SCONIFY_LOG": "stderr"})
    assert again.stdout == "\n", again.stderr  # the truncation the killed open committed
    assert "completed a commit that was stopped between its renames" in again.stderr
    assert "fspf_tag_next" not in world.keys.read_text()
    assert not any(p.name.startswith(".sconify") and "tmp" in p.name for p in world.volume.iterdir())


def test_rolled_back_volume_is_refused(world):
    old = world.root / "old-volume"
    shutil.copytree(world.volume, old)
    world.python_code("open(%r, 'w').write('7\\n')" % str(world.volume / "count.txt"))
    shutil.rmtree(world.volume)
    shutil.copytree(old, world.volume)
    result = world.python_code("print('started')", check=False)
    assert result.returncode == 2 and "started" not in result.stdout
    assert f"volume {world.volume}" in result.stderr and "rollback" in result.stderr


def on_the_root_mount(path: Path) -> bool:
    """No mount at path or a parent of it but "/": what the launcher takes for the container's
    own copy of a volume (here: this machine's root file system)."""
    best = ""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == "/" or str(path) == point or str(path).startswith(point.rstrip("/") + "/"):
            best = point if len(point) >= len(best) else best
    return best == "/"


def own_copy_run(world, code: str, *args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    if not on_the_root_mount(world.volume):
        pytest.skip("the test directory is on a mount of its own here: no volume is the 'container copy'")
    return world.python_code(code, *args, env={"SCONIFY_FRESHNESS": None, **(env or {})}, **kwargs)


COUNTER = ("p = %r\nn = int(open(p).read()) + 1\nopen(p, 'w').write('%%d\\n' %% n)\nprint(n)\n")


def test_own_copy_keeps_its_freshness_with_itself_not_in_the_keys_file(world):
    keys_before = world.keys.read_text()
    image_copy = world.root / "image-copy"
    shutil.copytree(world.volume, image_copy)
    code = COUNTER % str(world.volume / "count.txt")
    first = own_copy_run(world, code)
    assert first.stdout == "1\n"
    line = f"sconify-run: volume {world.volume} is the container's own copy (no volume mounted there)"
    assert first.stderr.startswith(line) and first.stderr.count("\n") == 1
    assert world.keys.read_text() == keys_before  # nothing recorded in the keys file
    state = json.loads((world.volume / ".sconify.state").read_text())
    assert state["volume"] == str(world.volume) and "fspf_tag_next" not in state
    assert bytes.fromhex(state["fspf_tag"]) == (world.volume / ".sconify.fspf").read_bytes()[-16:]
    # The same container started again (docker restart): its own copy and its state.
    assert own_copy_run(world, code).stdout == "2\n"
    assert own_copy_run(world, "import os; print(sorted(os.listdir(%r)))" % str(world.volume)).stdout == \
        "['count.txt', 'sub']\n"  # the state file is not the service's
    # A new container from the image (docker run --rm again): the image's copy starts.
    shutil.rmtree(world.volume)
    shutil.copytree(image_copy, world.volume)
    assert own_copy_run(world, code).stdout == "1\n"
    assert world.keys.read_text() == keys_before


def test_own_copy_an_older_copy_or_a_forged_state_is_refused(world):
    code = COUNTER % str(world.volume / "count.txt")
    own_copy_run(world, code)
    older = world.root / "older"
    shutil.copytree(world.volume, older)
    own_copy_run(world, code)
    # The older copy with its own (genuine) state is a state this container left behind.
    (world.volume / ".sconify.fspf").write_bytes((older / ".sconify.fspf").read_bytes())
    shutil.copy(older / "count.txt", world.volume / "count.txt")
    result = own_copy_run(world, "print('started')", check=False)
    assert result.returncode == 2 and "started" not in result.stdout
    assert f"volume {world.volume} (the container's own copy" in result.stderr
    # A state file written without the keys names the older tag: refused as well.
    state = json.loads((world.volume / ".sconify.state").read_text())
    state["fspf_tag"] = (older / ".sconify.fspf").read_bytes()[-16:].hex()
    (world.volume / ".sconify.state").write_text(json.dumps(state))
    result = own_copy_run(world, "print('started')", check=False)
    assert result.returncode == 2 and "started" not in result.stdout


def state_mac(key: bytes, volume: str, tag: str, next_tag: str = "") -> str:
    mac_key = hmac.new(key, b"sconify container state v1", "sha256").digest()
    return hmac.new(mac_key, f"sconify.state/v1\n{volume}\n{tag}\n{next_tag}".encode(), "sha256").hexdigest()


def test_own_copy_commit_under_way_is_promoted(world):
    code = COUNTER % str(world.volume / "count.txt")
    image_tag = world.tag()
    own_copy_run(world, code)
    # A crash after the renames: the state still names the image's tag, the new one as next.
    state_file = world.volume / ".sconify.state"
    state = json.loads(state_file.read_text())
    new_tag = state["fspf_tag"]
    assert state["mac"] == state_mac(world.key, str(world.volume), new_tag)
    crashed = {**state, "fspf_tag": image_tag, "fspf_tag_next": new_tag,
               "mac": state_mac(world.key, str(world.volume), image_tag, new_tag)}
    state_file.write_text(json.dumps(crashed))
    assert own_copy_run(world, "print(open(%r).read().strip())" % str(world.volume / "count.txt")).stdout == "1\n"
    promoted = json.loads(state_file.read_text())
    assert promoted["fspf_tag"] == new_tag and "fspf_tag_next" not in promoted


def test_own_copy_child_started_after_a_write_sees_it(world):
    read = "print(open(%r).read().strip())" % str(world.volume / "count.txt")
    child = ("import subprocess, sys\n" + COUNTER % str(world.volume / "count.txt") +
             "print(subprocess.run([sys.executable, %r, %r], capture_output=True, text=True).stdout.strip())\n"
             % (world.driver, read))
    assert own_copy_run(world, child).stdout.split() == ["1", "1"]


@pytest.mark.parametrize("at", ["volume", "parent"])
def test_a_mount_at_the_volume_or_a_parent_is_a_mounted_volume(world, at):
    """In a mount namespace of its own, the volume's directory (or the directory above it) is
    bind-mounted onto itself: the launcher takes it for a mounted volume, so freshness stays in
    the keys file and nothing is said at start."""
    if not on_the_root_mount(world.volume):
        pytest.skip("the test directory is on a mount of its own here")
    point = world.volume if at == "volume" else world.root
    code = COUNTER % str(world.volume / "count.txt")
    argv = [str(world.runtime.launcher), str(world.python), world.driver, code]
    script = 'mount --bind "$1" "$1" && shift && exec "$@"'
    env = {"PATH": os.environ["PATH"], "SCONIFY_RUNTIME_CONFIG": str(world.config), "SCONIFY_KEYS": str(world.keys)}
    try:
        result = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(point), *argv], capture_output=True,
                                text=True, env=env, cwd=world.root, timeout=60)
    except FileNotFoundError:
        pytest.skip("no unshare here")
    if result.returncode != 0 and "sconify" not in result.stderr:
        pytest.skip(f"cannot make a mount namespace here: {result.stderr.strip()}")
    assert (result.returncode, result.stdout, result.stderr) == (0, "1\n", "")
    assert world.tag() == (world.volume / ".sconify.fspf").read_bytes()[-16:].hex()  # recorded in the keys file
    assert not (world.volume / ".sconify.state").exists()


def test_freshness_choice_other_than_auto_or_keys_is_refused(world):
    result = world.python_code("print('started')", env={"SCONIFY_FRESHNESS": "none"}, check=False)
    assert result.returncode == 2 and result.stderr.startswith("sconify-run: SCONIFY_FRESHNESS is neither")


def test_tampered_chunk_is_an_io_error(world):
    stored = world.volume / "sub" / "blob.bin"
    data = bytearray(stored.read_bytes())
    data[70_000] ^= 1
    stored.write_bytes(bytes(data))
    result = world.python_code(
        "import errno\ntry:\n open(%r, 'rb').read()\nexcept OSError as e: print(errno.errorcode[e.errno])" % str(stored),
        env={"SCONIFY_LOG": "stderr"},
    )
    assert result.stdout.strip() == "EIO"
    assert "sconify-shield:" in result.stderr and "blob.bin" in result.stderr and "chunk 1" in result.stderr


def test_shield_lines_go_where_sconify_log_says_never_by_default_escaped(world):
    name = b"planted-\xff\x1b[31m\n.txt"  # not UTF-8, with control bytes: a raw name
    with open(os.fsencode(world.volume) + b"/" + name, "wb") as planted:
        planted.write(b"behind the service's back")
    code = ("import errno, os\ntry:\n open(os.fsencode(%r) + b'/' + %r)\n"
            "except OSError as e: print(errno.errorcode[e.errno])" % (str(world.volume), name))
    result = world.python_code(code)  # text=True: undecodable bytes on stderr would raise here
    assert result.stdout.strip() == "EACCES" and result.stderr == ""
    result = world.python_code(code, env={"SCONIFY_LOG": "stderr"})
    assert result.stdout.strip() == "EACCES"
    assert result.stderr.count("\n") == 1 and "planted-\\xff\\x1b[31m\\x0a.txt is not recorded" in result.stderr
    log = world.root / "shield.log"
    result = world.python_code(code, env={"SCONIFY_LOG": str(log)})
    assert result.stdout.strip() == "EACCES" and result.stderr == ""
    assert log.read_bytes().decode("utf-8").startswith("sconify-shield: ") and "planted-\\xff" in log.read_text()


def test_file_added_behind_the_service_is_refused(world):
    (world.volume / "planted.txt").write_text("not from the service\n")
    result = world.python_code(
        "import errno\ntry:\n open(%r).read()\nexcept OSError as e: print(errno.errorcode[e.errno])"
        % str(world.volume / "planted.txt")
    )
    assert result.stdout.strip() == "EACCES"


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def test_changed_embedded_code_is_refused(world):
    flip_byte(world.python, world.archive_offset)  # inside the embedfs: a measured page
    result = world.python_code("print('started')", check=False)
    assert result.returncode == 2 and "started" not in result.stdout
    assert "MRENCLAVE mismatch" in result.stderr


def test_changed_unloaded_byte_is_refused(world):
    # The section header table of the original python: no segment loads it, so MRENCLAVE keeps
    # its value, but the executable is not the one the keys were issued for.
    e_shoff = int.from_bytes(world.python.read_bytes()[0x28:0x30], "little")
    flip_byte(world.python, e_shoff + 70)
    result = world.python_code("print('started')", check=False)
    assert result.returncode == 2 and "started" not in result.stdout
    assert "executable changed" in result.stderr


def test_missing_and_malformed_keys_are_refused(world):
    world.keys.unlink()
    result = world.python_code("print('started')", check=False)
    assert result.returncode == 2 and "no keys file at" in result.stderr and "started" not in result.stdout
    world.keys.write_text("{not json")
    result = world.python_code("print('started')", check=False)
    assert result.returncode == 2 and "is not a sconify keys file" in result.stderr


def test_wrong_key_is_refused_without_printing_it(world):
    doc = json.loads(world.keys.read_text())
    wrong = os.urandom(32).hex()
    doc["volumes"][0]["fspf_key"] = wrong
    world.keys.write_text(json.dumps(doc))
    result = world.python_code("print('started')", check=False)
    assert result.returncode == 2 and "started" not in result.stdout
    assert wrong not in result.stderr and world.key.hex() not in result.stderr


def test_scone_debug_environment_keys(world):
    volume = json.loads(world.keys.read_text())["volumes"][0]
    env = {"SCONE_FSPF": str(world.fspf_path), "SCONE_FSPF_KEY": volume["fspf_key"], "SCONE_FSPF_TAG": volume["fspf_tag"],
           "SCONIFY_KEYS": ""}
    result = world.python_code(
        "import os\nprint(open(%r).read().strip(), sorted(k for k in os.environ if k.startswith('SCONE')))"
        % str(world.volume / "count.txt"),
        env=env,
    )
    assert result.stdout.strip() == "0 []"  # key bytes never reach the service's environment


def test_authenticated_volume(tmp_path, runtime):
    world = World(tmp_path, runtime, protection="authenticated")
    assert (world.volume / "count.txt").read_text() == "0\n"  # stored as is
    world.python_code("open(%r, 'w').write('5\\n')" % str(world.volume / "count.txt"))
    assert (world.volume / "count.txt").read_text() == "5\n"
    (world.volume / "count.txt").write_text("6\n")  # changed behind the service's back
    result = world.python_code(
        "import errno\ntry:\n open(%r).read()\nexcept OSError as e: print(errno.errorcode[e.errno])"
        % str(world.volume / "count.txt")
    )
    assert result.stdout.strip() == "EIO"


def test_exit_status_and_arguments_pass_through(world):
    result = world.run(str(world.python), DRIVER, "import sys; print(sys.argv[1:]); sys.exit(7)",
                       "a b", "c", check=False)
    assert result.returncode == 7 and result.stdout.strip() == "['a b', 'c']"


# ---------------------------------------------------------------- ephemeral regions

MARKER = "sconify-ephemeral-plaintext"


def stored_files(region: Path) -> dict[str, bytes]:
    """What is on disk under an ephemeral region, read by this (unshielded) process: the
    service's files, without the region's own (each start's fspf, the commit's lock)."""
    return {str(p.relative_to(region)): p.read_bytes() for p in sorted(region.rglob("*"))
            if p.is_file() and not p.name.startswith(".sconify.")}


def runtime_files(region: Path) -> list[str]:
    return sorted(p.name for p in region.rglob("*.sconify*"))


def assert_no_plaintext(region: Path) -> None:
    for path in region.rglob("*"):
        if path.is_file():
            assert MARKER.encode() not in path.read_bytes(), path


def test_ephemeral_file_is_ciphertext_on_disk_and_plaintext_to_the_service(world):
    out = world.python_code(
        "import os, subprocess\n"
        "d = %r; m = %r\n"
        "with open(d + '/a.txt', 'w') as f: f.write(m + ' a\\n')\n"
        "big = (m * 10000).encode()\n"  # several 64 KiB chunks
        "with open(d + '/big.bin', 'wb') as f: f.write(big)\n"
        "with open(d + '/a.txt', 'a') as f: f.write('more\\n')\n"
        "os.mkdir(d + '/sub')\n"
        "os.replace(d + '/a.txt', d + '/sub/b.txt')\n"
        "print(open(d + '/sub/b.txt').read().split(), open(d + '/big.bin', 'rb').read() == big,"
        " os.path.getsize(d + '/big.bin') == len(big), sorted(os.listdir(d)), os.listdir(d + '/sub'))\n"
        # a child that is not the measured executable reads what is on disk: ciphertext
        "raw = subprocess.run(['cat', d + '/sub/b.txt'], capture_output=True).stdout\n"
        "print(len(raw), m.encode() in raw)\n" % (str(world.tmp), MARKER)
    ).stdout.splitlines()
    assert out[0] == f"['{MARKER}', 'a', 'more'] True True ['big.bin', 'sub'] ['b.txt']"
    assert out[1] == f"{len(MARKER) + 3 + 5 + 16} False"
    stored = stored_files(world.tmp)
    assert sorted(stored) == ["big.bin", "sub/b.txt"]
    assert len(stored["big.bin"]) == len(MARKER) * 10000 + 16 * -(-len(MARKER) * 10000 // 65536)
    assert_no_plaintext(world.tmp)
    # this start's fspf of the region and the commit's lock, no temp files left
    assert re.fullmatch(r"\.sconify\.fspf\.[0-9a-f]{16} \.sconify\.lock", " ".join(runtime_files(world.tmp)))
    keys = json.loads(world.keys.read_text())
    assert [v["path"] for v in keys["volumes"]] == [str(world.volume)]  # nothing recorded for it


def test_ephemeral_region_starts_empty(world):
    (world.tmp / "planted.txt").write_text("planted " + MARKER)
    (world.tmp / "other.txt").write_text("other")
    (world.tmp / "link").symlink_to(world.volume / "count.txt")
    (world.tmp / "dir").mkdir()
    (world.tmp / "dir" / "inner.txt").write_text("inner")
    code = (
        "import errno, os\n"
        "d = %r\n"
        "def err(f, *a, **k):\n"
        "    try: f(*a, **k); return 'ok'\n"
        "    except OSError as e: return errno.errorcode[e.errno]\n"
        "fd = os.open(d, os.O_RDONLY)\n"
        "print(sorted(os.listdir(d)), os.listdir(d + '/dir'), sorted(e.name for e in os.scandir(fd)),"
        " os.listdir(fd), sorted(os.listdir(d + '/dir')))\n"
        "print(err(open, d + '/planted.txt'), err(os.stat, d + '/planted.txt'), err(os.lstat, d + '/link'),"
        " err(os.readlink, d + '/link'), os.path.exists(d + '/other.txt'), os.access(d + '/other.txt', os.F_OK),"
        " err(os.unlink, d + '/other.txt'), err(os.rename, d + '/other.txt', d + '/x'),"
        " err(os.stat, 'inner.txt', dir_fd=os.open(d + '/dir', os.O_RDONLY)), err(open, d + '/link'))\n"
        "with open(d + '/planted.txt', 'w') as f: f.write('mine')\n"
        "with open(d + '/other.txt', 'x') as f: f.write('mine too')\n"
        "with open(d + '/link', 'w') as f: f.write('not through the link')\n"
        "print(open(d + '/planted.txt').read(), open(d + '/other.txt').read(), sorted(os.listdir(d)))\n"
        % str(world.tmp)
    )
    out = world.python_code(code).stdout.splitlines()
    assert out[0] == "['dir'] [] ['dir'] ['dir'] []"
    assert out[1] == "ENOENT ENOENT ENOENT ENOENT False False ENOENT ENOENT ENOENT ENOENT"
    assert out[2] == "mine mine too ['dir', 'link', 'other.txt', 'planted.txt']"
    assert not (world.tmp / "link").is_symlink()  # replaced, not followed
    assert (world.volume / "count.txt").stat().st_size == 2 + 16  # the volume file is untouched
    assert (world.tmp / "dir" / "inner.txt").read_text() == "inner"
    assert_no_plaintext(world.tmp)
    assert b"mine" not in (world.tmp / "planted.txt").read_bytes()


def test_tempfile_in_an_ephemeral_region(world):
    code = (
        "import os, shutil, tempfile\n"
        "m = %r\n"
        "print(tempfile.gettempdir() == os.environ['TMPDIR'])\n"
        "fd, kept = tempfile.mkstemp(suffix='.kept')\n"
        "os.write(fd, (m + ' mkstemp').encode()); os.close(fd)\n"
        "fd, name = tempfile.mkstemp()\n"
        "with os.fdopen(fd, 'w') as f: f.write(m)\n"
        "print(open(kept).read() == m + ' mkstemp', open(name).read() == m); os.unlink(name)\n"
        "with tempfile.NamedTemporaryFile('w+', suffix='.named') as f:\n"
        "    f.write(m + ' named'); f.flush()\n"
        "    print(open(f.name).read() == m + ' named', os.path.basename(f.name) in os.listdir(os.path.dirname(f.name)))\n"
        "print(os.path.exists(f.name))\n"
        "with tempfile.NamedTemporaryFile('w', delete=False) as f: f.write(m + ' not deleted'); left = f.name\n"
        "with tempfile.TemporaryFile('w+') as f:\n"
        "    f.write(m + ' anonymous'); f.seek(0); print(f.read() == m + ' anonymous')\n"
        "with tempfile.SpooledTemporaryFile(max_size=10, mode='w+') as f:\n"
        "    f.write(m + ' spooled'); f.seek(0); print(f.read() == m + ' spooled')\n"
        "with tempfile.TemporaryDirectory() as t:\n"
        "    os.makedirs(t + '/sub/deeper')\n"
        "    for p in ('a', 'sub/b', 'sub/deeper/c'):\n"
        "        with open(os.path.join(t, p), 'w') as f: f.write(m + p)\n"
        "    print(sorted(os.listdir(t)), sorted(os.listdir(t + '/sub')), open(t + '/sub/deeper/c').read() == m + 'sub/deeper/c')\n"
        "    shutil.copytree(t, t + '-copy'); print(open(t + '-copy/sub/b').read() == m + 'sub/b')\n"
        "    shutil.rmtree(t + '-copy')\n"
        "print(os.path.exists(t), sorted(os.listdir(os.environ['TMPDIR'])) == sorted([os.path.basename(kept), os.path.basename(left)]))\n"
        "print(open(left).read() == m + ' not deleted')\n" % MARKER
    )
    world.policy["allow_env"] = ["TMPDIR"]  # where temporary files go is the policy's (--allow-env TMPDIR)
    world.set_ephemeral(world.tmp)
    out = world.python_code(code, env={"TMPDIR": str(world.tmp)}).stdout.split()
    assert out == ["True", "True", "True", "True", "True", "False", "True", "True", "['a',", "'sub']",
                   "['b',", "'deeper']", "True", "True", "False", "True", "True"]
    stored = stored_files(world.tmp)
    assert len(stored) == 2 and any(name.endswith(".kept") for name in stored)  # TemporaryFile never hit the disk
    assert_no_plaintext(world.tmp)


def test_a_second_run_cannot_read_the_first_runs_files(world):
    world.python_code(
        "import os\nd = %r\nos.mkdir(d + '/sub')\n"
        "open(d + '/state.txt', 'w').write(%r)\nopen(d + '/sub/x', 'w').write('x')\n" % (str(world.tmp), MARKER)
    )
    first = stored_files(world.tmp)
    assert sorted(first) == ["state.txt", "sub/x"]
    assert_no_plaintext(world.tmp)
    out = world.python_code(
        "import errno, os\nd = %r\n"
        "def err(f, *a, **k):\n"
        "    try: f(*a, **k); return 'ok'\n"
        "    except OSError as e: return errno.errorcode[e.errno]\n"
        "print(sorted(os.listdir(d)), os.listdir(d + '/sub'), err(open, d + '/state.txt'), err(open, d + '/sub/x', 'rb'),"
        " err(os.rmdir, d + '/sub'))\n"
        "open(d + '/state.txt', 'w').write('second')\nprint(open(d + '/state.txt').read())\n" % str(world.tmp)
    ).stdout.splitlines()
    # The first run's files are not listed and not served; its directory is there and, empty to
    # the service, removed as on a local disk (with the first run's ciphertext in it).
    assert out == ["['sub'] [] ENOENT ENOENT ok", "second"]
    assert not (world.tmp / "sub").exists()
    assert stored_files(world.tmp)["state.txt"] != first["state.txt"]


def test_directory_renamed_in_an_ephemeral_region_keeps_its_files(world):
    out = world.python_code(
        "import errno, os, shutil\nd = %r; v = %r\n"
        "os.makedirs(d + '/a/b')\nopen(d + '/a/b/f', 'w').write('deep')\nopen(d + '/a/g', 'w').write('top')\n"
        "f = open(d + '/a/open', 'w'); f.write('written before the rename')\n"
        "os.rename(d + '/a', d + '/c')\n"
        "f.write(', closed after it'); f.close()\n"
        "print(open(d + '/c/b/f').read(), open(d + '/c/g').read(), sorted(os.listdir(d)), sorted(os.listdir(d + '/c')))\n"
        "print(open(d + '/c/open').read())\n"
        "try: os.rename(d + '/c/g', v + '/g')\n"
        "except OSError as e: print(errno.errorcode[e.errno])\n"
        "shutil.move(d + '/c/g', v + '/g'); print(open(v + '/g').read(), os.path.exists(d + '/c/g'))\n"
        % (str(world.tmp), str(world.volume))
    ).stdout.splitlines()
    assert out == ["deep top ['c'] ['b', 'g', 'open']", "written before the rename, closed after it", "EXDEV",
                   "top False"]
    shield = Shield(world.fspf_path, world.key, bytes.fromhex(world.tag()), root="/")
    assert shield.read(str(world.volume / "g")) == b"top"  # moved into the volume: protected by its fspf


def test_unlinked_open_file_is_not_brought_back_on_close(world):
    out = world.python_code(
        "import os\nd = %r\n"
        "f = open(d + '/gone', 'w'); f.write('x'); os.unlink(d + '/gone'); f.write('y'); f.close()\n"
        "print(os.path.exists(d + '/gone'), os.listdir(d))\n" % str(world.tmp)
    ).stdout.strip()
    assert out == "False []"
    assert stored_files(world.tmp) == {}


# --- One ephemeral region for the whole measured process tree (issue 23): the launcher makes
# the region's key for each start and grants it; the region's fspf is shared as a volume's is ---

TREE_CHILD = (  # run by a measured child: reads what its parent wrote, writes, rewrites, removes
    "import os, sys\n"
    "d = sys.argv[1]\n"
    "print('child reads', open(d + '/from-parent.txt').read(), sorted(os.listdir(d)), os.path.getsize(d + '/from-parent.txt'))\n"
    "with open(d + '/from-child.txt', 'w') as f: f.write('the child %s' % sys.argv[2])\n"
    "with open(d + '/sub/rewritten.txt', 'w') as f: f.write('rewritten by the child')\n"
    "os.unlink(d + '/removed-by-child.txt')\n"
    "os.replace(d + '/renamed-by-child.txt', d + '/sub/renamed.txt')\n"
)
TREE_PARENT = (
    "import __main__, multiprocessing, os, subprocess, sys\n"
    "del __main__.__file__  # the driver is no script a spawned worker can run again\n"
    "d, child = sys.argv[1], sys.argv[2]\n"
    "sys.path.insert(0, sys.argv[3])\n"
    "import mpwork\n"
    "os.mkdir(d + '/sub')\n"
    "for name, text in (('from-parent.txt', %r), ('sub/rewritten.txt', 'the parent'), ('removed-by-child.txt', 'x'),"
    " ('renamed-by-child.txt', 'moved')):\n"
    "    with open(d + '/' + name, 'w') as f: f.write(text)\n"
    "run = subprocess.run([sys.executable, %r, child, d, 'by subprocess'], capture_output=True, text=True)\n"
    "print((run.stdout + run.stderr[-300:]).strip())\n"
    "print('parent reads', open(d + '/from-child.txt').read(), open(d + '/sub/rewritten.txt').read(),"
    " open(d + '/sub/renamed.txt').read(), sorted(os.listdir(d)), sorted(os.listdir(d + '/sub')))\n"
    "with multiprocessing.get_context(sys.argv[4]).Pool(2) as pool:\n"
    "    print(pool.map(mpwork.write, [(d + '/mp-%%d.txt' %% n, n) for n in range(2)], chunksize=1))\n"
    "    print(pool.apply(mpwork.read, (d + '/from-parent.txt',)))\n"
    "print([open(d + '/mp-%%d.txt' %% n).read().strip() for n in range(2)])\n"
    "raw = subprocess.run(['sh', '-c', 'cat \"$0\"/from-parent.txt \"$0\"/from-child.txt', d], capture_output=True).stdout\n"
    "print('sh reads', len(raw), %r in raw)\n"
) % (MARKER, DRIVER, MARKER.encode())


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_the_measured_process_tree_shares_its_ephemeral_region(world, method):
    mods = world.root / "mods"
    mods.mkdir()
    (mods / "mpwork.py").write_text(MP_WORKER + "def read(path):\n    return open(path).read()\n")
    result = world.python_code(TREE_PARENT, str(world.tmp), TREE_CHILD, str(mods), method, env={"SCONIFY_LOG": "stderr"})
    lines = result.stdout.splitlines()
    assert lines[0] == (f"child reads {MARKER} ['from-parent.txt', 'removed-by-child.txt', 'renamed-by-child.txt', "
                        f"'sub'] {len(MARKER)}"), result.stderr
    assert lines[1] == ("parent reads the child by subprocess rewritten by the child moved "
                        "['from-child.txt', 'from-parent.txt', 'sub'] ['renamed.txt', 'rewritten.txt']"), result.stderr
    assert lines[2:5] == ["[0, 1]", MARKER, "['written by worker 0', 'written by worker 1']"], result.stderr
    # a program that is not the measured executable (a shell, cat) reads what is on disk: ciphertext
    assert lines[5] == f"sh reads {len(MARKER) + 16 + len('the child by subprocess') + 16} False"
    assert "sconify-shield" not in result.stderr
    assert sorted(stored_files(world.tmp)) == ["from-child.txt", "from-parent.txt", "mp-0.txt", "mp-1.txt",
                                               "sub/renamed.txt", "sub/rewritten.txt"]
    assert_no_plaintext(world.tmp)  # the region's fspf included: it names the files, encrypted


def granted(world: World, code: str, *args: str) -> tuple[str, dict]:
    """Run code as the service under strace and return its stdout and the grant its shield read
    (the shield closes the grant's descriptor once read: only a tracer sees it)."""
    trace = world.root / f"grant-trace-{len(list(world.root.glob('grant-trace-*')))}"
    result = world.python_code(code, *args, under=("strace", "-f", "-qq", "-s", "1048576", "-e", "trace=pread64",
                                                   "-o", str(trace)))
    for line in trace.read_text().splitlines():
        found = re.search(r'pread64\(\d+, "(\{.*\\"schema\\":\\"sconify\.grant/v1\\".*\})"', line)
        if found:
            return result.stdout, json.loads(ast.literal_eval('"' + found.group(1) + '"'))
    raise AssertionError("the shield read no grant")


@pytest.mark.skipif(not shutil.which("strace"), reason="needs strace")
def test_the_ephemeral_key_is_in_the_grant_only(world):
    out, grant = granted(world,
                         "import os, sys\n"
                         "open(sys.argv[1] + '/x', 'w').write('x')\n"
                         "print(sorted(os.listdir(sys.argv[1])))\n", str(world.tmp))
    [region] = grant["ephemeral"]
    key = region["key"]
    assert region["path"] == str(world.tmp) and out == "['x']\n"
    assert re.fullmatch(r"\.sconify\.fspf\.[0-9a-f]{16}", os.path.basename(region["fspf_path"]))
    for file in world.root.rglob("*"):  # not on disk (keys file, region, anywhere), as hex or bytes
        if file.is_file() and not file.is_symlink() and not file.name.startswith("grant-trace-"):
            data = file.read_bytes()
            assert key.encode() not in data and bytes.fromhex(key) not in data, file
    # A second start makes another key and another fspf: the first one's is not this one's.
    out, again = granted(world, "import os, sys\nprint(os.path.exists(sys.argv[1]))\n", str(world.tmp / "x"))
    assert again["ephemeral"][0]["key"] != key and out == "False\n"
    assert len([name for name in runtime_files(world.tmp) if name.startswith(".sconify.fspf.")]) == 2


def test_the_service_does_not_hold_the_grant(world):
    # Read at start, the grant's descriptor is closed: not among the service's descriptors
    # (CPython's test_subprocess lists them), not in /proc/PID/fd for whoever may look there,
    # and neither its key nor its environment name it any more; a measured child still gets it.
    code = ("import os, subprocess, sys\n"
            "fds = sorted(os.listdir('/proc/self/fd'))\n"
            "links = [os.readlink('/proc/self/fd/' + fd) for fd in fds if os.path.exists('/proc/self/fd/' + fd)]\n"
            "print(os.environ['SCONIFY_GRANT'], any('sconify-grant' in link for link in links))\n"
            "print(subprocess.run([sys.executable, '-c', %r], capture_output=True, text=True).stdout.strip())\n"
            % (READ_COUNT % str(world.volume / "count.txt")))
    assert world.python_code(code).stdout == "699 False\n0\n"


def test_what_a_tool_writes_in_the_region_is_hidden_and_removed_with_its_directory(world):
    # A program without the grant (tar, a shell) writes plaintext the service cannot trust: the
    # service does not see it, as a planted file, and removing the directory removes it too.
    out = world.python_code(
        "import errno, os, shutil, subprocess\nd = %r + '/work'\n"
        "os.makedirs(d + '/deeper'); open(d + '/mine.txt', 'w').write('mine')\n"
        "subprocess.run(['sh', '-c', 'echo tool > \"$0\"/tool.txt; echo tool > \"$0\"/deeper/tool.txt', d], check=True)\n"
        "print(sorted(os.listdir(d)), os.listdir(d + '/deeper'), os.path.exists(d + '/tool.txt'))\n"
        "try: os.rmdir(d)\nexcept OSError as e: print(errno.errorcode[e.errno])\n"
        "shutil.rmtree(d); print(os.path.exists(d))\n" % str(world.tmp)).stdout.splitlines()
    assert out == ["['deeper', 'mine.txt'] [] False", "ENOTEMPTY", "False"]
    assert not (world.tmp / "work").exists()


def test_a_file_opened_for_reading_has_its_paths_identity(world):
    # fstat of a file opened for reading is the file's identity, as stat gives it: shutil.rmtree
    # of a file says ENOTDIR (not "Cannot call rmtree on a symbolic link")
    out = world.python_code(
        "import os, shutil, sys\n"
        "for d in sys.argv[1:]:\n"
        "    open(d + '/f', 'w').write('f')\n"
        "    with open(d + '/f') as f: same = os.path.samestat(os.lstat(d + '/f'), os.fstat(f.fileno()))\n"
        "    try: shutil.rmtree(d + '/f')\n"
        "    except OSError as e: print(same, type(e).__name__)\n", str(world.tmp), str(world.volume)).stdout
    assert out == "True NotADirectoryError\n" * 2


def test_a_file_left_open_at_exit_keeps_what_was_written(world):
    # As the kernel's close at exit does (multiprocessing's test_stderr_flush, test_sys_exit): a
    # child that writes to a file and exits without closing it (exit(), not _exit)
    child = ("import os, sys\nfd = os.open(sys.argv[1] + '/left-open', os.O_WRONLY | os.O_CREAT)\n"
             "os.write(fd, b'kept')\nsys.stderr = open(os.open(sys.argv[1] + '/stderr', os.O_WRONLY | os.O_CREAT), 'w')\n"
             "sys.exit('the reason')\n")
    out = world.python_code(
        "import subprocess, sys\n"
        "for d in sys.argv[2:]:\n"
        "    rc = subprocess.run([sys.executable, %r, sys.argv[1], d]).returncode\n"
        "    print(rc, open(d + '/left-open').read(), open(d + '/stderr').read().strip())\n" % DRIVER,
        child, str(world.tmp), str(world.volume)).stdout
    assert out == "1 kept the reason\n" * 2


def test_a_process_without_the_grant_keeps_a_region_of_its_own(world):
    # The measured executable without a grant (a command the policy did not record, docker exec,
    # a preload by hand) serves /tmp from its own memory: it sees neither the service's files
    # nor leaves its own to anyone, and it cannot read the shared fspf's key.
    world.python_code("open(%r, 'w').write(%r)" % (str(world.tmp / "service.txt"), MARKER))
    code = ("import errno, os\nd = %r\n"
            "try: open(d + '/service.txt').read()\nexcept OSError as e: print(errno.errorcode[e.errno])\n"
            "open(d + '/own.txt', 'w').write('own'); print(open(d + '/own.txt').read(), sorted(os.listdir(d)))\n"
            % str(world.tmp))
    result = world.run(str(world.python), "-c", code, check=False)
    assert result.returncode == 0 and result.stdout.splitlines() == ["ENOENT", "own ['own.txt']"], result.stderr
    later = world.python_code("import os\nprint(sorted(os.listdir(%r)))" % str(world.tmp)).stdout.strip()
    assert later == "[]"  # a later start sees neither


def test_ephemeral_region_nested_in_a_volume(world):
    cache = world.volume / "cache"
    cache.mkdir()
    world.set_ephemeral(world.tmp, cache)
    world.python_code("open(%r, 'w').write(%r)\nprint(open(%r).read())" % (str(cache / "c"), MARKER, str(cache / "c")))
    assert MARKER.encode() not in (cache / "c").read_bytes()
    shield = Shield(world.fspf_path, world.key, bytes.fromhex(world.tag()), root="/")
    assert shield.fspf.file(str(cache / "c")) is None  # the ephemeral region's, not the volume's
    out = world.python_code("import os\nprint(sorted(os.listdir(%r)), os.listdir(%r))" % (str(world.volume), str(cache)))
    assert out.stdout.strip() == "['cache', 'count.txt', 'sub'] []"


def test_libc_mkstemp_and_tmpfile_in_an_ephemeral_region(world):
    # C code's mkstemp()/tmpfile() open inside glibc, past open(): the shield serves them itself.
    world.set_ephemeral(world.tmp, Path("/tmp"))  # tmpfile() always uses /tmp (P_tmpdir)
    out = world.python_code(
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "libc.tmpfile.restype = ctypes.c_void_p; libc.fileno.argtypes = [ctypes.c_void_p]\n"
        "t = ctypes.create_string_buffer(%r.encode() + b'/cXXXXXX.txt')\n"
        "fd = libc.mkstemps(t, 4); os.write(fd, %r.encode()); os.close(fd)\n"
        "name = t.value.decode()\n"
        "print(os.path.basename(name) in os.listdir(%r), open(name).read() == %r)\n"
        "f = libc.tmpfile(); print(os.readlink('/proc/self/fd/%%d' %% libc.fileno(f)).startswith('/memfd:'))\n"
        % (str(world.tmp), MARKER, str(world.tmp), MARKER)
    ).stdout.split()
    assert out == ["True", "True", "True"]
    assert len(stored_files(world.tmp)) == 1
    assert_no_plaintext(world.tmp)



# ---------------------------------------------------------------- errno and modes, as the kernel's


SQLITE_JOURNALS = r"""
import os, sqlite3, sys
d = sys.argv[1]
for mode in ("delete", "truncate", "persist", "wal"):
    path = os.path.join(d, f"{mode}.db")
    try:
        db = sqlite3.connect(path)
        db.execute(f"pragma journal_mode={mode}")
        db.execute("create table t(a text)")
        for i in range(20):
            with db:
                db.execute("insert into t values (?)", (f"secret-row-{i:04d}",))
        db.close()
        again = sqlite3.connect(path)
        rows = again.execute("select count(*) from t").fetchone()[0]
        check = again.execute("pragma integrity_check").fetchone()[0]
        again.close()
        same = os.stat(path).st_ino == os.fstat(os.open(path, os.O_RDWR)).st_ino
        print(mode, rows, check, same)
    except sqlite3.Error as e:
        print(mode, "error:", e)
"""


def test_sqlite_rollback_journals_and_wal_work_as_on_a_plain_directory(world):
    """SQLite (the one in the interpreter's _sqlite3) is the oracle: every journal mode, its rows
    read back by a new connection, integrity_check ok, and a path's st_ino equal to that of an
    fd open on it (SQLite compares them to tell whether its database was moved while open)."""
    plain = world.root / "plain-sqlite"
    plain.mkdir()
    expected = world.python_code(SQLITE_JOURNALS, str(plain)).stdout
    assert expected.splitlines() == [f"{mode} 20 ok True" for mode in ("delete", "truncate", "persist", "wal")]
    for region in (world.volume / "db", world.tmp / "db"):
        region.mkdir()
        assert world.python_code(SQLITE_JOURNALS, str(region)).stdout == expected, region
    for stored in (world.volume / "db").iterdir():
        assert b"secret-row" not in stored.read_bytes(), stored  # ciphertext only
    # a later process of the service reads what was committed
    out = world.python_code("import sqlite3; print(sqlite3.connect(%r).execute('select max(a) from t').fetchone()[0])"
                            % str(world.volume / "db" / "delete.db")).stdout
    assert out == "secret-row-0019\n"


def as_on_a_plain_directory(world, script: str, name: str, *regions: Path) -> str:
    """Run script on a plain directory and on NAME in each region; each prints what the plain
    one printed. The plain directory's output (the oracle, for the caller to check)."""
    plain = world.root / f"plain-{name}"
    plain.mkdir()
    expected = world.python_code(script, str(plain)).stdout
    for region in regions:
        (region / name).mkdir()
        assert world.python_code(script, str(region / name)).stdout == expected, region
    return expected


# A database with a table t(x) in DIR (argv[1]) for each journal mode: created(mode) -> (path, connection).
SQLITE_CREATED = r"""
import multiprocessing, os, sqlite3, sys
def created(mode):
    path = os.path.join(sys.argv[1], mode + ".db")
    db = sqlite3.connect(path)
    db.execute(f"pragma journal_mode={mode}")
    db.execute("create table t(x)")
    db.commit()
    return path, db
"""

SQLITE_TWO_CONNECTIONS = SQLITE_CREATED + r"""
for mode in ("delete", "wal"):
    path, a = created(mode)
    b = sqlite3.connect(path)
    seen = [b.execute("select count(*) from t").fetchone()[0]]
    a.execute("insert into t values (1)")
    a.commit()
    seen.append(b.execute("select count(*) from t").fetchone()[0])
    b.execute("insert into t values (2)")
    b.commit()
    seen.append(a.execute("select count(*) from t").fetchone()[0])
    a.close()
    b.close()
    c = sqlite3.connect(path)
    print(mode, seen, c.execute("select count(*) from t").fetchone()[0], c.execute("pragma integrity_check").fetchone()[0])
"""


def test_sqlite_two_connections_of_one_process_see_each_others_commits(world):
    """Two connections of one process to one database (a pool, two threads): each sees what the
    other committed, as on a plain directory. Every descriptor the process opens on a file it has
    open for writing shares that file's plaintext memfd; with a copy per open, the second
    connection read a stale database, its commit overwrote the first's row (rollback journal)
    and WAL gave "disk I/O error"."""
    expected = as_on_a_plain_directory(world, SQLITE_TWO_CONNECTIONS, "two", world.volume, world.tmp)
    assert expected.splitlines() == ["delete [0, 1, 2] 2 ok", "wal [0, 1, 2] 2 ok"]  # the oracle


SQLITE_FORKED_WRITERS = SQLITE_CREATED + r"""
def insert(path, first):
    db = sqlite3.connect(path, timeout=60)
    for i in range(first, first + 10):
        with db:
            db.execute("insert into t values (?)", (i,))
    db.close()
for mode in ("delete", "wal"):
    path, parent = created(mode)
    workers = [multiprocessing.get_context("fork").Process(target=insert, args=(path, k * 100)) for k in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    parent.close()
    db = sqlite3.connect(path)
    print(mode, [w.exitcode for w in workers], db.execute("select count(*) from t").fetchone()[0],
          db.execute("pragma integrity_check").fetchone()[0])
"""


def test_sqlite_forked_writers_of_a_parent_holding_the_database_open(world):
    """A parent that keeps its connection open while 4 forked workers insert (a pre-forking
    server): the workers' opens share the memfd the parent's descriptor holds, so their POSIX
    locks and pages are one file's, as on a plain directory (before: the parent's close wrote its
    stale copy over every worker's rows, and WAL workers failed). Workers that open a database
    nobody in their process tree holds open still get copies of their own:
    tests/test_runtime_sqlite.py, xfail."""
    expected = as_on_a_plain_directory(world, SQLITE_FORKED_WRITERS, "forked", world.volume)
    assert expected.splitlines() == ["delete [0, 0, 0, 0] 40 ok", "wal [0, 0, 0, 0] 40 ok"]  # the oracle


READER_CLOSES_AFTER_ANOTHER_WRITER = r"""
import os, sqlite3, subprocess, sys
d = sys.argv[1]
db_path, text_path = os.path.join(d, "r.db"), os.path.join(d, "r.txt")
db = sqlite3.connect(db_path)
db.execute("create table t(x)")
db.commit()
db.close()
with open(text_path, "w") as f:
    f.write("first")
reader = sqlite3.connect(db_path)  # SQLite opens its database for writing, always
print("reader sees", reader.execute("select count(*) from t").fetchone()[0])
text = open(text_path, "r+")
subprocess.run([sys.executable, "-c", "import sqlite3, sys; db = sqlite3.connect(sys.argv[1]); "
                "db.execute('insert into t values (1)'); db.commit(); open(sys.argv[2], 'w').write('second')",
                db_path, text_path], check=True)
reader.close()
text.close()
print("after the reader closed", sqlite3.connect(db_path).execute("select count(*) from t").fetchone()[0],
      open(text_path).read())
"""


def test_a_reader_closing_a_file_it_opened_for_writing_keeps_what_another_process_wrote(world):
    """A process that opened a file for writing and wrote nothing (a SQLite connection that only
    read, `open(p, 'r+')`) commits nothing when it closes it, as with the kernel: before, its
    close wrote its copy back over what another process of the service had committed since."""
    expected = as_on_a_plain_directory(world, READER_CLOSES_AFTER_ANOTHER_WRITER, "reader", world.volume)
    assert expected.splitlines() == ["reader sees 0", "after the reader closed 1 second"]  # the oracle


def test_truncate_slash_missing_dir_and_modes_as_on_a_plain_directory(world):
    plain = world.root / "plain-ops"
    plain.mkdir()
    expected = world.python_code(PYTHON_FILE_OPS, str(plain)).stdout
    assert "truncate 5 (None, b'hello', 5)" in expected and "open wb slash EISDIR" in expected  # the oracle
    for region in (world.volume / "ops", world.tmp / "ops"):
        region.mkdir()
        result = world.python_code(PYTHON_FILE_OPS, str(region))
        assert result.stdout == expected, region
    stored = world.volume / "ops"
    assert {p.name: oct(p.stat().st_mode) for p in stored.iterdir() if p.name.startswith("m")} == {
        "m600": "0o100600", "m-umask": "0o100600", "m644-moved": "0o100640"}
    assert b"hello" not in (stored / "t.txt").read_bytes()
    again = world.python_code("print(open(%r, 'rb').read())" % str(stored / "t.txt"))
    assert again.stdout.strip() == "b'hell'"  # committed, readable by the next process


def test_symlinks_in_regions_as_on_a_plain_directory_hard_links_refused(world):
    plain = world.root / "plain-links"
    plain.mkdir()
    expected = world.python_code(PYTHON_LINK_OPS, str(plain)).stdout.splitlines()
    assert "hardlink None" in expected and "readlink f.txt EINVAL" in expected  # the oracle
    for region in (world.volume / "links", world.tmp / "links"):
        region.mkdir()
        result = world.python_code(PYTHON_LINK_OPS, str(region))
        got = result.stdout.splitlines()
        assert "hardlink EPERM" in got, result.stderr  # hard links are refused in a region
        expected_here = [line.replace("'hl', ", "") for line in expected if line != "hardlink None"]
        assert [line for line in got if line != "hardlink EPERM"] == expected_here, (region, result.stderr)
        assert b"hello" not in (region / "f.txt").read_bytes()
    assert_no_plaintext(world.tmp)


def test_statvfs_of_embedded_code_is_its_file_systems(world):
    out = world.python_code("import os, shutil, sys; sys.path.insert(0, %r)\n"
                            "import pkg.mod\n"
                            "print(os.path.exists(pkg.mod.__file__), shutil.disk_usage(pkg.mod.__file__).total > 0)\n"
                            "print(os.statvfs(%r).f_bsize == os.statvfs('/').f_bsize)\n"
                            % (EMBEDDED_ROOT, EMBEDDED_ROOT + "/pkg/__init__.py"))
    assert out.stdout.split() == ["True", "True", "True"], out.stderr


def timestamp_pyc(source: str, filename: str, mtime: int, size: int) -> bytes:
    """The pyc CPython writes for a source of this mtime and size (what it validates it by)."""
    from importlib._bootstrap_external import _code_to_timestamp_pyc

    return bytes(_code_to_timestamp_pyc(compile(source, filename, "exec"), mtime, size))


def test_embedded_files_have_the_executables_time_and_their_pycs_are_valid(tmp_path, runtime):
    """A file of the image layer has a date (zipfile refuses one before 1980), and CPython takes
    a pyc compiled in the image from a source of the executable's date instead of the source."""
    when = 1686355200  # a package's date (SOURCE_DATE_EPOCH), the executable's and its sources'
    source, compiled = "X = 'from the source'\n", "X = 'from the pyc'\n"
    mod = EMBEDDED_ROOT + "/dated/mod.py"
    world = World(tmp_path, runtime, embed={
        mod: source,
        EMBEDDED_ROOT + "/dated/__pycache__/mod.cpython-311.pyc": timestamp_pyc(compiled, mod, when, len(source)),
    })
    os.utime(world.python, (when, when))  # the measurement is of the content, not the time
    code = ("import os, sys, time, zipfile; sys.path.insert(0, os.path.dirname(sys.argv[1]))\n"
            "import mod; st = os.stat(sys.argv[1])\n"
            "print(mod.X, st.st_mtime == os.stat(sys.executable).st_mtime == st.st_ctime == %d)\n"
            "print(zipfile.ZipInfo.from_file(sys.argv[1]).date_time == time.localtime(%d)[:6])\n"
            "with open(sys.argv[1], 'rb') as f: print(os.fstat(f.fileno()).st_mtime == %d)\n" % (when, when, when))
    result = world.python_code(code, mod)
    assert result.stdout.splitlines() == ["from the pyc True", "True", "True"], result.stderr


def test_mmap_resized_after_its_file_was_closed_is_saved(world):
    code = ("import mmap, os, sys\n"
            "p = os.path.join(sys.argv[1], 'mm.bin')\n"
            "f = open(p, 'wb+'); f.write(b'x' * 10); f.flush()\n"
            "m = mmap.mmap(f.fileno(), 0)  # its own copy of the fd: fcntl(F_DUPFD_CLOEXEC)\n"
            "f.close()\n"
            "m.resize(20); m[10:20] = b'y' * 10; m.flush(); m.close()\n"
            "print(os.path.getsize(p), open(p, 'rb').read())\n")
    expected = world.python_code(code, str(world.root)).stdout
    assert expected.split() == ["20", "b'xxxxxxxxxxyyyyyyyyyy'"]  # the oracle
    for region in (world.volume, world.tmp):
        result = world.python_code(code, str(region))
        assert result.stdout == expected, (region, result.stderr)
    assert b"yyyy" not in (world.volume / "mm.bin").read_bytes()


def test_non_utf8_file_names_in_regions_as_on_a_plain_directory(world):
    """A name that is not UTF-8 (CPython's TESTFN_UNENCODABLE under the C locale) works in the
    ephemeral region and in a volume; the volume's fspf records it and sconify's tools read it."""
    code = ("import os, sys\n"
            "d = os.path.join(os.fsencode(sys.argv[1]), b'names'); os.mkdir(d)\n"
            "name = os.path.join(d, b'caf\\xe9-\\xff.txt'); open(name, 'w').write('latin-1 name')\n"
            "print(os.listdir(d), os.stat(name).st_size, open(name).read())\n"
            "os.rename(name, name + b'2'); print(os.listdir(d)); os.unlink(name + b'2'); print(os.listdir(d))\n"
            "open(os.path.join(d, b'kept-\\xff'), 'w').write('for the next process')\n")
    (world.root / "plain-names").mkdir()
    expected = world.python_code(code, str(world.root / "plain-names")).stdout
    assert "12 latin-1 name" in expected  # the oracle
    for region in (world.tmp, world.volume):
        result = world.python_code(code, str(region))
        assert result.stdout == expected, (region, result.stderr)
        assert_no_plaintext(region)
    kept = os.fsdecode(os.path.join(os.fsencode(world.volume), b"names", b"kept-\xff"))
    assert world.python_code(f"print(open({kept!r}).read())").stdout == "for the next process\n"
    shield = Shield(world.fspf_path, world.key, bytes.fromhex(world.tag()), root="/")
    assert shield.read(kept) == b"for the next process"
    stored = [os.fsdecode(p) for p in world.volume.rglob("*") if p.is_file() and not p.name.startswith(".sconify.")]
    assert kept in stored and not shield.verify_all(present=stored).problems


TIMES = r"""
import os, sys
d = sys.argv[1]; p = os.path.join(d, 't.txt')
with open(p, 'wb', 0) as f:
    f.write(b'data'); os.utime(f.fileno(), ns=(1_000_000_000, 2_000_000_000))
print('utime fd', os.stat(p).st_mtime_ns, os.stat(p).st_atime_ns)
os.utime(p, ns=(3_000_000_000, 4_000_000_000))
with open(p, 'rb') as f: f.read()
with open(p, 'r+b') as f: pass
print('kept', os.stat(p).st_mtime_ns)
os.rename(p, p + '2'); print('renamed', os.stat(p + '2').st_mtime_ns)
with open(p + '2', 'ab') as f: f.write(b'more')
print('written', os.stat(p + '2').st_mtime_ns > 4_000_000_000)
"""


def test_file_times_as_on_a_plain_directory(world):
    expected = world.python_code(TIMES, str(world.root)).stdout
    assert "utime fd 2000000000 1000000000" in expected and "renamed 4000000000" in expected  # the oracle
    for region in (world.volume, world.tmp):
        result = world.python_code(TIMES, str(region))
        assert result.stdout == expected, (region, result.stderr)


XATTRS = r"""
import errno, os, sys
p = os.path.join(sys.argv[1], 'x.txt')
def on_fd(mode, call, *args):
    with open(p, mode, 0) as f:
        return call(f.fileno(), *args)
def err(call, *args):
    try:
        return call(*args)
    except OSError as e:
        return errno.errorcode[e.errno]
with open(p, 'wb') as f: f.write(b'content')
on_fd('wb', os.setxattr, 'user.a', b'set on a truncating fd')  # test_os's test_fds
print(on_fd('rb', os.getxattr, 'user.a'), os.getxattr(p, 'user.a'))
on_fd('r+b', os.setxattr, 'user.b', b'2', os.XATTR_CREATE)
print(err(on_fd, 'rb', os.setxattr, 'user.b', b'3', os.XATTR_CREATE), sorted(on_fd('rb', os.listxattr)))
os.setxattr(p, 'user.c', b'by path')
with open(p, 'ab') as f: f.write(b' rewritten'); os.fsync(f.fileno())
os.rename(p, p + '2'); os.rename(p + '2', p)
print('kept', sorted(os.listxattr(p)), os.getxattr(p, 'user.c'), open(p, 'rb').read())
on_fd('rb', os.removexattr, 'user.a')
print(err(on_fd, 'rb', os.getxattr, 'user.a'), sorted(os.listxattr(p)))
"""


def test_extended_attributes_on_a_descriptor_are_the_files_as_on_a_plain_directory(world):
    """fsetxattr & co. on a region file's descriptor act on the stored file, as the path calls
    do (before, they set the plaintext memfd's, gone at close), and a rewrite or a rename keeps
    them, as the kernel's do."""
    (world.root / "plain-xattrs").mkdir()
    expected = world.python_code(XATTRS, str(world.root / "plain-xattrs")).stdout
    assert expected.splitlines()[0] == "b'set on a truncating fd' b'set on a truncating fd'"  # the oracle
    for region in (world.volume, world.tmp):
        result = world.python_code(XATTRS, str(region))
        assert result.stdout == expected, (region, result.stderr)


def test_a_second_write_only_open_of_an_open_temp_file_is_saved(world):
    code = ("import os, sys\n"
            "p = os.path.join(sys.argv[1], 'wo.txt')\n"
            "keep = open(p, 'w'); keep.write('first'); keep.flush()\n"
            "with open(p, 'wb') as f: f.write(b'second')  # shutil.copyfile onto a file still open\n"
            "print(open(p, 'rb').read()); keep.close(); print(open(p, 'rb').read())\n")
    expected = world.python_code(code, str(world.root)).stdout
    assert expected.split() == ["b'second'"] * 2  # the oracle
    result = world.python_code(code, str(world.tmp))
    assert result.stdout == expected, result.stderr


def test_a_symlink_in_a_volume_is_there_for_the_next_process(world):
    link = world.volume / "link.txt"
    made = world.python_code("import os; os.symlink('count.txt', %r); os.symlink('sub', %r)"
                             % (str(link), str(world.volume / "dir")))
    assert made.returncode == 0 and os.readlink(link) == "count.txt"  # a kernel symlink, its target plain
    code = ("import os\n"
            "print(os.readlink(%r), os.stat(%r).st_size, open(%r).read().strip(), len(open(%r, 'rb').read()))\n"
            % (str(link), str(link), str(link), str(world.volume / "dir" / "blob.bin")))
    assert world.python_code(code).stdout.split() == ["count.txt", "2", "0", "200000"]
    shield = Shield(world.fspf_path, world.key, bytes.fromhex(world.tag()), root="/")
    assert shield.fspf.file(str(link)).protection == "symlink" and shield.check_file(str(link)) is None  # sconify reads it
    # changed behind the service's back: refused, not followed
    link.unlink()
    link.symlink_to("sub/blob.bin")
    bad = world.python_code("import os\n"
                            "for f in (os.readlink, os.stat, open):\n"
                            "    try: f(%r); print('served')\n"
                            "    except OSError as e: print(e.errno)\n" % str(link))
    assert bad.stdout.split() == [str(errno.EIO)] * 3
    assert Shield(world.fspf_path, world.key, bytes.fromhex(world.tag()), root="/").check_file(str(link)) is not None
    gone = world.python_code("import os; os.unlink(%r); print(sorted(os.listdir(%r)))" % (str(link), str(world.volume)))
    assert gone.stdout.strip() == "['count.txt', 'dir', 'sub']"


def test_truncate_through_a_symlink_outside_a_region_truncates_the_plaintext(world):
    (world.root / "count-link.txt").symlink_to(world.volume / "count.txt")
    code = ("import os\nos.truncate(%r, 1)\nprint(repr(open(%r).read()))"
            % (str(world.root / "count-link.txt"), str(world.volume / "count.txt")))
    assert world.python_code(code).stdout == "'0'\n"  # not the ciphertext cut (EIO ever after)
    assert world.python_code("print(repr(open(%r).read()))" % str(world.volume / "count.txt")).stdout == "'0'\n"


def test_a_symlink_outside_a_region_leads_to_its_plaintext(world):
    (world.root / "link.txt").symlink_to(world.volume / "count.txt")
    (world.root / "rel-link.txt").symlink_to("volume/count.txt")
    code = ("import os\n"
            "links = [%r, 'rel-link.txt']\n"
            "print([(os.stat(p).st_size, open(p).read()) for p in links])\n"
            "open(links[0], 'w').write('through the link\\n')\n"
            "print(os.stat(links[1]).st_size, os.lstat(links[1]).st_size, open(%r).read().strip())\n"
            % (str(world.root / "link.txt"), str(world.volume / "count.txt")))
    out = world.python_code(code).stdout.splitlines()  # cwd: world.root
    assert out == ["[(2, '0\\n'), (2, '0\\n')]", "17 16 through the link"]
    assert b"through" not in (world.volume / "count.txt").read_bytes() and (world.root / "link.txt").is_symlink()

# ---------------------------------------------------------------- Node.js (libuv) writes

HOST_NODE = shutil.which("node")


@pytest.mark.skipif(not HOST_NODE, reason="needs node")
def test_node_writes_reach_the_volume_and_the_ephemeral_region(tmp_path, runtime):
    world = World(tmp_path, runtime, executable=Path(os.path.realpath(HOST_NODE)))
    plain = tmp_path / "plain-node"
    plain.mkdir()
    expected = subprocess.run([HOST_NODE, "-e", NODE_WRITES, str(plain), str(plain)], capture_output=True,
                              text=True, check=True, timeout=60).stdout.split("\n")[0]
    result = world.python_code(NODE_WRITES, str(world.volume / "node"), str(world.tmp))
    lines = result.stdout.splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == [expected.split(" ", 1)[1]] * 2, result.stderr
    for name, data in stored_files(world.tmp).items():
        assert b"hello" not in data and b"line 999" not in data, name
    assert b"hello" not in (world.volume / "node" / "sync.txt").read_bytes()
    again = world.python_code("console.log(require('fs').readFileSync(process.argv[2], 'utf8'))",
                      str(world.volume / "node" / "append.txt"))
    assert again.stdout.strip() == "a1;a2;a3;"  # committed: a new process reads it


# --- sealed code roots: only the measured code is there -------------------------------------

PLANTED = "print('PLANTED CODE RAN')\nX = 'planted'\n"
MEASURED_MOD = "X = 'measured'\n"


def sealed_world(tmp_path: Path, runtime, seal: bool = True) -> tuple[World, Path]:
    """A world whose embedfs holds code/mod.py and code/pkg/ under a real directory code/,
    on which the disk (an image layer, a bind mount) brings planted code: a changed mod.py, a
    json.py shadowing the stdlib's, a __pycache__ pyc that CPython would take for mod.py's,
    a shared object; and templates/page.html, a file the conversion left there as not code."""
    code = tmp_path / "code"
    world = World(tmp_path, runtime, embed={f"{code}/mod.py": MEASURED_MOD, f"{code}/pkg/__init__.py": "P = 1\n"})
    (code / "templates").mkdir(parents=True)
    (code / "templates" / "page.html").write_text("<p>left as not code</p>\n")
    (code / "templates" / "planted.html").write_text("<p>planted</p>\n")
    (code / "mod.py").write_text(PLANTED)
    (code / "json.py").write_text(PLANTED)
    (code / "__pycache__").mkdir()
    # A timestamp pyc matching what stat says of the embedded mod.py (the executable's mtime,
    # its size).
    subprocess.run([str(REAL_PYTHON), "-c",
                    "import importlib._bootstrap_external as b, sys\n"
                    "code = compile(sys.argv[1], sys.argv[2], 'exec')\n"
                    "open(sys.argv[3], 'wb').write(b._code_to_timestamp_pyc(code, int(sys.argv[5]), int(sys.argv[4])))",
                    PLANTED, str(code / "mod.py"), str(code / "__pycache__" / "mod.cpython-311.pyc"),
                    str(len(MEASURED_MOD)), str(int(world.python.stat().st_mtime))], check=True)
    shutil.copy(_ctypes.__file__, code / "planted.so")  # a real shared object
    if seal:
        world.seal([str(code)], [str(code / "templates" / "page.html")])
    return world, code


SEALED_PROBE = """
import ctypes, errno, os, sys
code = sys.argv[1]
sys.path.insert(0, code)
import mod, json, pkg
def err(call):
    try:
        call()
        return 'ok'
    except OSError as e:
        return errno.errorcode.get(e.errno, 'refused')
print('import', mod.X, hasattr(json, 'dumps'), pkg.P)
print('listdir', sorted(os.listdir(code)), sorted(e.name for e in os.scandir(code)))
print('left', sorted(os.listdir(code + '/templates')), open(code + '/templates/page.html').read().strip())
print('absent', err(lambda: open(code + '/templates/planted.html')), err(lambda: os.stat(code + '/json.py')),
      err(lambda: os.lstat(code + '/__pycache__')), err(lambda: os.listdir(code + '/__pycache__')),
      os.access(code + '/json.py', os.R_OK), os.path.exists(code + '/planted.so'))
print('readonly', err(lambda: open(code + '/new.py', 'w')), err(lambda: os.mkdir(code + '/pkg/__pycache__')),
      err(lambda: open(code + '/templates/page.html', 'a')))
print('dlopen', err(lambda: ctypes.CDLL(code + '/planted.so')))
print('remove', err(lambda: os.unlink(code + '/json.py')), err(lambda: os.unlink(code + '/templates/page.html')),
      err(lambda: os.rename(code + '/json.py', code + '/x.py')))
"""


def test_planted_code_under_a_sealed_root_is_not_there(tmp_path, runtime):
    world, code = sealed_world(tmp_path, runtime)
    result = world.run(str(world.python), "-c", SEALED_PROBE, str(code), env={"SCONIFY_LOG": "stderr"})
    lines = result.stdout.splitlines()
    assert "PLANTED" not in result.stdout
    assert lines[0] == "import measured True 1"
    assert lines[1] == "listdir ['mod.py', 'pkg', 'templates'] ['mod.py', 'pkg', 'templates']"
    assert lines[2] == "left ['page.html'] <p>left as not code</p>"
    assert lines[3] == "absent ENOENT ENOENT ENOENT ENOENT False False"
    assert lines[4] == "readonly EROFS EROFS EROFS"
    assert lines[5] == "dlopen refused"
    assert lines[6] == "remove ENOENT EROFS ENOENT"
    assert "planted.so is under a code root and is not measured code" in result.stderr
    # CPython wrote no bytecode (its mkdir of __pycache__ failed, silently), and nothing changed.
    assert sorted(p.name for p in (code / "__pycache__").iterdir()) == ["mod.cpython-311.pyc"]
    assert not (code / "pkg").exists()
    # Another program sees the disk as it is.
    assert world.run("cat", str(code / "json.py")).stdout == PLANTED


def test_without_the_seal_the_planted_pyc_runs(tmp_path, runtime):
    # The oracle for the test above: the same files, no code_roots in the config (a conversion
    # from before the seal), and the planted __pycache__ pyc and json.py are what CPython runs.
    world, code = sealed_world(tmp_path, runtime, seal=False)
    result = world.run(str(world.python), "-c", "import sys; sys.path.insert(0, sys.argv[1]); import mod; print(mod.X)",
                       str(code))
    assert result.stdout.splitlines() == ["PLANTED CODE RAN", "planted"]


MAKE_USER_SITE = r"""
import errno, os, subprocess, sys
site_dir = sys.argv[1]
before = os.path.isdir(site_dir)
os.makedirs(site_dir)  # test_site's setUpModule, where the image has no user site
child = subprocess.run([sys.executable, '-c', 'import os, sys; print(os.path.isdir(sys.argv[1]))', site_dir],
                       capture_output=True, text=True).stdout.strip()
print(before, os.path.isdir(site_dir), os.listdir(site_dir), child)
"""

PROBE_USER_SITE = r"""
import errno, os, site, sys
site_dir, zip_root, nested = sys.argv[1:4]
def err(call):
    try:
        call()
        return 'ok'
    except OSError as e:
        return errno.errorcode[e.errno]
    except ImportError as e:
        return type(e).__name__
sys.path[:0] = [site_dir, zip_root]
site.addsitedir(site_dir)  # its planted .pth is not there
fd = os.open(site_dir, os.O_RDONLY)
print('planted', os.path.isdir(site_dir), os.listdir(site_dir), sorted(os.listdir(fd)),
      err(lambda: __import__('planted')), err(lambda: __import__('pkg')), err(lambda: __import__('zmod')),
      err(lambda: os.open('planted.py', os.O_RDONLY, dir_fd=fd)), os.path.exists(zip_root))
print('readonly', err(lambda: open(os.path.join(site_dir, 'new.py'), 'w')), err(lambda: os.mkdir(site_dir + '/sub')),
      err(lambda: os.makedirs(nested)))
"""


def test_a_missing_user_site_can_be_made_and_stays_sealed(tmp_path, runtime):
    """A code root the image lacks and no other code root holds (the user site) may be created
    by the service and is seen as a directory, by its children too; whatever the host then
    plants in it (a module, a .pth, a package) is not there, and a file or a symlink planted at
    such a root (python311.zip, a link to code) is not there either."""
    (tmp_path / "plain").mkdir()
    expected = subprocess.run([str(REAL_PYTHON), "-c", MAKE_USER_SITE, str(tmp_path / "plain" / "site-packages")],
                              capture_output=True, text=True, check=True).stdout
    assert expected == "False True [] True\n"  # the oracle: the original, on a plain disk
    world, code = sealed_world(tmp_path, runtime)
    site_dir = tmp_path / "home" / ".local" / "lib" / "python3.11" / "site-packages"
    zip_root, nested = tmp_path / "lib" / "python311.zip", code / "vendor"
    world.seal([str(code), str(site_dir), str(zip_root), str(nested)], [str(code / "templates" / "page.html")])
    made = world.run(str(world.python), "-c", MAKE_USER_SITE, str(site_dir))
    assert made.stdout == expected, made.stderr
    # The host plants code in it, and a zip of code at another missing root.
    (site_dir / "planted.py").write_text(PLANTED)
    (site_dir / "planted.pth").write_text("import planted\n")
    (site_dir / "pkg").mkdir()
    (site_dir / "pkg" / "__init__.py").write_text(PLANTED)
    zip_root.parent.mkdir()
    subprocess.run([str(REAL_PYTHON), "-c", "import sys, zipfile; zipfile.ZipFile(sys.argv[1], 'w').writestr('zmod.py', "
                    "sys.argv[2])", str(zip_root), PLANTED], check=True)
    args = (str(site_dir), str(zip_root), str(nested))
    result = world.run(str(world.python), "-c", PROBE_USER_SITE, *args)
    assert "PLANTED" not in result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "planted True [] [] ModuleNotFoundError ModuleNotFoundError ModuleNotFoundError ENOENT False",
        "readonly EROFS EROFS EROFS"], result.stderr
    # A symlink at the root, to a directory of code: not there.
    site_dir.rename(site_dir.parent / "real-site")
    site_dir.symlink_to(site_dir.parent / "real-site")
    linked = world.run(str(world.python), "-c", "import os, sys; sys.path.insert(0, sys.argv[1])\n"
                       "try:\n    import planted\nexcept ImportError as e:\n    print(type(e).__name__)\n"
                       "print(os.path.isdir(sys.argv[1]), os.path.exists(sys.argv[1]))", str(site_dir))
    assert linked.stdout.split() == ["ModuleNotFoundError", "False", "False"], linked.stderr


def test_a_nested_region_stays_visible_in_a_sealed_root(tmp_path, runtime):
    world, code = sealed_world(tmp_path, runtime)
    (code / "work" / "tmp").mkdir(parents=True)
    world.set_ephemeral(code / "work" / "tmp")
    result = world.python_code(
        "import os, sys\n"
        "code = %r\n"
        "open(code + '/work/tmp/x.txt', 'w').write('in the region')\n"
        "print(sorted(os.listdir(code)), sorted(os.listdir(code + '/work')), open(code + '/work/tmp/x.txt').read())"
        % str(code))
    assert result.stdout.strip() == "['mod.py', 'pkg', 'templates', 'work'] ['tmp'] in the region"


def test_a_shallow_root_seals_its_code_names_only(tmp_path, runtime):
    # A system directory on sys.path (/usr/local/bin for a console script there): a module,
    # a package's __init__ or a __pycache__ planted directly in it is not there (a directory
    # alone is an empty namespace package), nor a module planted in an embedded package; its
    # other files are.
    shallow = tmp_path / "bin"
    world = World(tmp_path, runtime, embed={f"{shallow}/tool.py": "T = 'measured'\n",
                                            f"{shallow}/pkg/__init__.py": "P = 'measured'\n"})
    for name in ("json.py", "evilpkg/__init__.py", "pkg/extra.py", "__pycache__/tool.cpython-311.pyc"):
        (shallow / name).parent.mkdir(parents=True, exist_ok=True)
        (shallow / name).write_text(PLANTED)
    (shallow / "gunicorn").write_text("#!/usr/bin/python3\n")
    world.seal([], [], [str(shallow)])
    result = world.run(str(world.python), "-c",
                       "import os, sys\nsys.path.insert(0, sys.argv[1])\nimport json, tool, pkg\n"
                       "import evilpkg\nprint('evilpkg', evilpkg.__file__)\n"
                       "try:\n import pkg.extra\nexcept ImportError: print('no pkg.extra')\n"
                       "print(hasattr(json, 'dumps'), tool.T, pkg.P, os.path.exists(sys.argv[1] + '/gunicorn'),"
                       " os.path.exists(sys.argv[1] + '/__pycache__'))", str(shallow))
    assert "PLANTED" not in result.stdout
    assert result.stdout.splitlines() == ["evilpkg None", "no pkg.extra", "True measured measured True False"]


def test_the_seal_holds_without_keys(tmp_path, runtime):
    # The measured executable with the shield but no keys (an image without volumes, or a
    # process the launcher gives none): the embedded code is served and the roots are sealed.
    world, code = sealed_world(tmp_path, runtime)
    doc = json.loads(world.config.read_text())
    world.config.write_text(json.dumps({**doc, "volumes": [], "ephemeral": []}))
    result = subprocess.run([str(world.python), "-c", "import sys; sys.path.insert(0, sys.argv[1]); import mod, json;"
                             " print(mod.X, hasattr(json, 'dumps'))", str(code)],
                            env={"PATH": os.environ["PATH"], "LD_PRELOAD": str(runtime.shield),
                                 "SCONIFY_RUNTIME_CONFIG": str(world.config)},
                            capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.splitlines() == ["measured True"]


# ---------------------------------------------------------------- the policy: keys are granted

READ_COUNT = "import errno\ntry:\n print(open(%r).read().strip())\nexcept OSError as e: print(errno.errorcode[e.errno])"


def test_policy_another_command_runs_without_keys(world):
    result = world.run(str(world.python), "-c", READ_COUNT % str(world.volume / "count.txt"), check=False,
                       env={"SCONIFY_LOG": "stderr"})
    assert result.returncode == 0 and result.stdout.strip() == "EACCES"
    launcher, shield = [line for line in result.stderr.splitlines() if line]
    assert launcher.startswith("sconify-run: argument 2 of the command is '-c' where the recorded command has")
    assert "--allow-args" in launcher
    assert shield.startswith(f"sconify-shield: {world.volume}/count.txt: volume {world.volume} is unreadable")


def test_policy_code_choosing_environment_is_refused(world, tmp_path):
    injected = tmp_path / "inj"
    injected.mkdir()
    for name, value in (("PYTHONPATH", str(injected)), ("PYTHONSTARTUP", str(injected / "s.py")),
                        ("LD_LIBRARY_PATH", str(injected)), ("NODE_OPTIONS", "--require /inj/x.js"),
                        ("PATH", f"{injected}:{os.environ['PATH']}")):
        result = world.python_code("print('started')", env={name: value}, check=False)
        assert result.returncode == 2 and "started" not in result.stdout, name
        assert result.stderr.count("\n") == 1 and f"the environment sets {name}," in result.stderr, result.stderr
        assert f"--allow-env {name}" in result.stderr and value not in result.stderr
    # harmless variables are the host's to set
    assert world.python_code("print('started')", env={"PYTHONUNBUFFERED": "1", "LANG": "C"}).stdout == "started\n"


def test_policy_allowed_environment_variable(world, tmp_path):
    world.policy["allow_env"] = ["PYTHONPATH"]
    world.set_ephemeral(world.tmp)
    (tmp_path / "extra.py").write_text("VALUE = 'extra'\n")
    out = world.python_code("import extra; print(extra.VALUE, open(%r).read().strip())" % str(world.volume / "count.txt"),
                            env={"PYTHONPATH": str(tmp_path)}).stdout
    assert out == "extra 0\n"


def test_policy_changed_runtime_config_is_refused(world):
    doc = json.loads(world.config.read_text())
    doc["policy"]["command"] = [str(world.python), "-c"]
    world.config.write_text(json.dumps(doc))  # the keys still bind the original
    result = world.run(str(world.python), "-c", "print('started')", check=False)
    assert result.returncode == 2 and "started" not in result.stdout and result.stderr.count("\n") == 1
    assert f"runtime config {world.config} has SHA-256" in result.stderr and "refusing to start" in result.stderr


def test_policy_keys_file_without_the_binding_is_refused(world):
    doc = json.loads(world.keys.read_text())
    del doc["runtime_config_sha256"]
    world.keys.write_text(json.dumps(doc))
    result = world.python_code("print('started')", check=False)
    assert result.returncode == 2 and "does not bind the runtime config" in result.stderr and "re-convert" in result.stderr


def test_shield_preloaded_by_hand_gets_no_keys(world):
    # No launcher, so no grant: the keys file and SCONIFY_KEYS are there, yet the volume stays shut.
    env = {"PATH": os.environ["PATH"], "LD_PRELOAD": str(world.runtime.shield), "SCONIFY_KEYS": str(world.keys),
           "SCONIFY_LOG": "stderr",
           "SCONIFY_RUNTIME_CONFIG": str(world.config), "SCONIFY_GRANT": "0"}
    code = READ_COUNT % str(world.volume / "count.txt") + "\nimport sys; sys.path.insert(0, %r); import pkg; print(pkg.NAME)" % EMBEDDED_ROOT
    result = subprocess.run([str(world.python), "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert result.stdout.splitlines() == ["EACCES", "embedded package"]  # code served, data not
    assert "no keys were granted to this process" in result.stderr


def test_policy_a_variable_set_twice_is_refused(world):
    # libc's getenv sees the first LD_PRELOAD, ld.so loads the last: the check must not judge
    # one value while another takes effect (a bytes key and a str key are two entries).
    env = {"LD_PRELOAD": str(world.runtime.shield), b"LD_PRELOAD": b"/nonexistent/evil.so"}
    result = world.python_code("print('started')", env=env, check=False)
    assert result.returncode == 2 and "started" not in result.stdout
    assert result.stderr.count("\n") == 1 and "sets LD_PRELOAD more than once" in result.stderr


def test_policy_another_program_at_the_recorded_name_gets_no_keys(world, tmp_path):
    """The recorded command names `python` found in PATH (a link to the measured executable);
    a derived layer could put another program there, with the measured file intact."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(world.python)
    path = f"{bin_dir}:{os.environ['PATH']}"
    world.policy.update(command=["python", world.driver], service_command=["python", world.driver],
                        environment={"PATH": path})
    world.set_ephemeral(world.tmp)
    assert world.run("python", world.driver, READ_COUNT % str(world.volume / "count.txt"),
                     env={"PATH": path}).stdout == "0\n"  # the link: granted
    (bin_dir / "python").unlink()
    (bin_dir / "python").write_text("#!/bin/sh\necho grant=$SCONIFY_GRANT\nfor f in /proc/self/fd/*; do [ -f \"$f\" ] && head -c 2000 \"$f\"; done\n")
    (bin_dir / "python").chmod(0o755)
    result = world.run("python", world.driver, "x", env={"PATH": path}, check=False)
    assert "fspf_key" not in result.stdout and world.key.hex() not in result.stdout and "grant=\n" in result.stdout
    assert f"python is {bin_dir}/python, neither the measured executable" in result.stderr


def test_a_program_the_service_executes_does_not_inherit_the_grant(world):
    # a shell or tool the granted service runs sees no grant descriptor; the measured
    # executable it runs does (test_grant_is_inherited_by_subprocesses)
    code = ("import os, sys\nfd = os.environ['SCONIFY_GRANT']\nsys.stdout.flush()\n"
            "os.execv('/bin/sh', ['sh', '-c', 'cat /proc/self/fd/' + fd + ' || echo no-grant'])\n")
    result = world.python_code(code, check=False)
    assert "no-grant" in result.stdout and "fspf_key" not in result.stdout


def test_grant_is_inherited_by_forked_children(world):
    out = world.python_code(
        "import os\npid = os.fork()\n"
        "if pid == 0:\n    print('child', open(%r).read().strip(), flush=True)\n    os._exit(0)\n"
        "os.waitpid(pid, 0)\n" % str(world.volume / "count.txt")).stdout
    assert out == "child 0\n"


def test_granted_process_checks_its_own_executable(world):
    # The granted service replaces the measured file and execs it: the new process inherits the
    # grant, but its /proc/self/exe no longer has the keys' executable_sha256.
    changed = world.root / "python.changed"
    data = bytearray(world.python.read_bytes())
    data[-1] ^= 1
    changed.write_bytes(bytes(data))
    changed.chmod(0o755)
    code = ("import os, sys\nos.rename(%r, %r)\n"
            "os.execv(%r, [%r, '-c', %r])\n") % (str(changed), str(world.python), str(world.python),
                                                 str(world.python), READ_COUNT % str(world.volume / "count.txt"))
    result = world.python_code(code, check=False, env={"SCONIFY_LOG": "stderr"})
    assert result.stdout.strip() == "EACCES"
    assert "but the keys were issued for" in result.stderr


def test_grant_is_passed_to_executed_children_even_with_close_fds(world):
    # subprocess closes every inherited descriptor (close_fds=True) before the exec: the shield
    # writes the grant again for the child; a child whose environment leaves it out gets none.
    read = READ_COUNT % str(world.volume / "count.txt")
    out = world.python_code(
        "import os, subprocess, sys\n"
        "print(subprocess.run([sys.executable, '-c', %r], capture_output=True, text=True).stdout.strip())\n"
        "env = {k: v for k, v in os.environ.items() if k != 'SCONIFY_GRANT'}\n"
        "print(subprocess.run([sys.executable, '-c', %r], capture_output=True, text=True, env=env).stdout.strip())\n"
        % (read, read)).stdout
    assert out == "0\nEACCES\n"


# --- C code in the measured process: stdio, fortified open, syscall() (issue 23) -----------

# A CPython C extension as C libraries read files: stdio (fopen, fread, fgets, fclose), open and
# openat with flags the compiler cannot see (so -D_FORTIFY_SOURCE=2 makes them __open64_2 and
# __openat64_2), syscall(SYS_openat) then read and syscall(SYS_close), freopen, stat, statx and
# syscall(SYS_newfstatat).
CEXT_SOURCE = r"""
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static PyObject *drain(int fd, const char *path, int raw_close)
{
    PyObject *out = PyBytes_FromStringAndSize(NULL, 0);
    char buf[8192];
    ssize_t n = 0;
    while (out && (n = read(fd, buf, sizeof buf)) > 0) PyBytes_ConcatAndDel(&out, PyBytes_FromStringAndSize(buf, n));
    int saved = errno;
    if (raw_close) syscall(SYS_close, fd);
    else close(fd);
    if (n < 0) {
        Py_XDECREF(out);
        errno = saved;
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
    }
    return out;
}

static PyObject *read_fopen(PyObject *self, PyObject *args)
{
    const char *path;
    if (!PyArg_ParseTuple(args, "s", &path)) return NULL;
    FILE *f = fopen(path, "r");
    if (!f) return PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
    PyObject *out = PyBytes_FromStringAndSize(NULL, 0);
    char buf[8192];
    size_t n;
    while (out && (n = fread(buf, 1, sizeof buf, f)) > 0) PyBytes_ConcatAndDel(&out, PyBytes_FromStringAndSize(buf, n));
    fclose(f);
    return out;
}

static PyObject *first_line(PyObject *self, PyObject *args)
{
    const char *path;
    char line[256];
    if (!PyArg_ParseTuple(args, "s", &path)) return NULL;
    FILE *f = fopen(path, "re");
    if (!f) return PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
    char *got = fgets(line, sizeof line, f);
    fclose(f);
    return PyBytes_FromString(got ? line : "");
}

static PyObject *read_open(PyObject *self, PyObject *args)
{
    const char *path;
    int flags;
    if (!PyArg_ParseTuple(args, "si", &path, &flags)) return NULL;
    int fd = open(path, flags);
    if (fd < 0) return PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
    return drain(fd, path, 0);
}

static PyObject *read_openat(PyObject *self, PyObject *args)
{
    const char *path;
    int flags;
    if (!PyArg_ParseTuple(args, "si", &path, &flags)) return NULL;
    int fd = openat(AT_FDCWD, path, flags);
    if (fd < 0) return PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
    return drain(fd, path, 0);
}

static PyObject *read_syscall(PyObject *self, PyObject *args)
{
    const char *path;
    if (!PyArg_ParseTuple(args, "s", &path)) return NULL;
    long fd = syscall(SYS_openat, AT_FDCWD, path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
    return drain((int)fd, path, 1);
}

static PyObject *read_freopen(PyObject *self, PyObject *args)
{
    const char *path;
    if (!PyArg_ParseTuple(args, "s", &path)) return NULL;
    FILE *f = fopen("/dev/null", "r");
    if (!f || !(f = freopen(path, "r", f))) return PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
    int fd = dup(fileno(f));
    fclose(f);
    return drain(fd, path, 0);
}

static PyObject *statx_size(PyObject *self, PyObject *args)
{
    const char *path;
    struct statx stx;
    if (!PyArg_ParseTuple(args, "s", &path)) return NULL;
    if (statx(AT_FDCWD, path, 0, STATX_SIZE, &stx) != 0) return PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
    return PyLong_FromLongLong((long long)stx.stx_size);
}

static PyObject *write_file(PyObject *self, PyObject *args)
{
    const char *path, *how, *data;
    Py_ssize_t len;
    if (!PyArg_ParseTuple(args, "ssy#", &path, &how, &data, &len)) return NULL;
    int ok;
    if (strcmp(how, "syscall") == 0) {
        long fd = syscall(SYS_openat, AT_FDCWD, path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        ok = fd >= 0 && write((int)fd, data, (size_t)len) == len;
        ok = fd >= 0 && syscall(SYS_close, fd) == 0 && ok;
    } else {
        FILE *f = strcmp(how, "freopen") == 0 ? freopen(path, "w", fopen("/dev/null", "r")) : fopen(path, "w");
        ok = f && fwrite(data, 1, (size_t)len, f) == (size_t)len;
        ok = f && fclose(f) == 0 && ok;
    }
    if (!ok) return PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
    Py_RETURN_NONE;
}

static PyObject *remove_file(PyObject *self, PyObject *args)
{
    const char *path;
    if (!PyArg_ParseTuple(args, "s", &path)) return NULL;
    if (remove(path) != 0) return PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
    Py_RETURN_NONE;
}

static PyObject *stat_size(PyObject *self, PyObject *args)
{
    const char *path;
    struct stat st;
    if (!PyArg_ParseTuple(args, "s", &path)) return NULL;
    if (stat(path, &st) != 0) return PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
    return PyLong_FromLongLong((long long)st.st_size);
}

static PyObject *syscall_stat_size(PyObject *self, PyObject *args)
{
    const char *path;
    struct stat st;
    if (!PyArg_ParseTuple(args, "s", &path)) return NULL;
    if (syscall(SYS_newfstatat, AT_FDCWD, path, &st, 0) != 0) return PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
    return PyLong_FromLongLong((long long)st.st_size);
}

static PyMethodDef methods[] = {
    {"read_fopen", read_fopen, METH_VARARGS, NULL},
    {"first_line", first_line, METH_VARARGS, NULL},
    {"read_open", read_open, METH_VARARGS, NULL},
    {"read_openat", read_openat, METH_VARARGS, NULL},
    {"read_syscall", read_syscall, METH_VARARGS, NULL},
    {"read_freopen", read_freopen, METH_VARARGS, NULL},
    {"write_file", write_file, METH_VARARGS, NULL},
    {"remove_file", remove_file, METH_VARARGS, NULL},
    {"stat_size", stat_size, METH_VARARGS, NULL},
    {"statx_size", statx_size, METH_VARARGS, NULL},
    {"syscall_stat_size", syscall_stat_size, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "cprobe", NULL, -1, methods};

PyMODINIT_FUNC PyInit_cprobe(void) { return PyModule_Create(&module); }
"""

# Each way of reading, for each path: a digest of what it read (or the errno name), the first
# line, the sizes stat gives.
CEXT_PROBE = """
import errno, hashlib, os, sys
sys.path.insert(0, sys.argv[1])
import cprobe
def show(call, *args):
    try:
        got = call(*args)
    except OSError as e:
        return errno.errorcode[e.errno]
    return hashlib.sha256(got).hexdigest()[:16] if isinstance(got, bytes) else got
for path in sys.argv[2:]:
    print(show(cprobe.read_fopen, path), show(cprobe.first_line, path), show(cprobe.read_open, path, os.O_RDONLY),
          show(cprobe.read_openat, path, os.O_RDONLY), show(cprobe.read_syscall, path), show(cprobe.read_freopen, path),
          show(cprobe.stat_size, path), show(cprobe.statx_size, path), show(cprobe.syscall_stat_size, path))
"""


@pytest.fixture(scope="module")
def cprobe(tmp_path_factory) -> Path:
    """The extension, built with the host's gcc against REAL_PYTHON's headers with Debian's
    default flags for extensions (python3-dev's sysconfig: -O2 -D_FORTIFY_SOURCE=2): a directory
    holding cprobe.so."""
    include = subprocess.run([str(REAL_PYTHON), "-c", "import sysconfig; print(sysconfig.get_paths()['include'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert (Path(include) / "Python.h").is_file(), f"no Python.h in {include}: install python3-dev"
    out = tmp_path_factory.mktemp("cprobe")
    (out / "cprobe.c").write_text(CEXT_SOURCE)
    subprocess.run(["gcc", "-O2", "-D_FORTIFY_SOURCE=2", "-Wall", "-Werror", "-fPIC", "-shared", "-I", include,
                    str(out / "cprobe.c"), "-o", str(out / "cprobe.so")], check=True)
    imports = subprocess.run(["nm", "-D", "--undefined-only", str(out / "cprobe.so")], capture_output=True,
                             text=True, check=True).stdout.split()
    assert {"fopen64", "freopen64", "__open64_2", "__openat64_2", "stat64", "statx", "syscall"} <= {name.split("@")[0] for name in imports}  # what the flags make of it
    return out


def test_c_extension_reads_volume_plaintext_with_stdio_open_and_syscall(world, cprobe):
    names = ["count.txt", "sub/blob.bin"]
    oracle = subprocess.run([str(REAL_PYTHON), "-c", CEXT_PROBE, str(cprobe), *(str(world.root / "plain" / n) for n in names)],
                            capture_output=True, text=True, check=True).stdout.splitlines()
    assert oracle[0].split()[6:] == ["2"] * 3 and oracle[1].split()[6:] == ["200000"] * 3
    result = world.python_code(CEXT_PROBE, str(cprobe), *(str(world.volume / n) for n in names))
    assert result.stdout.splitlines() == oracle, result.stderr
    # Without the shield, the same reads see what is on disk: ciphertext.
    raw = subprocess.run([str(REAL_PYTHON), "-c", CEXT_PROBE, str(cprobe), str(world.volume / "count.txt")],
                         capture_output=True, text=True, check=True).stdout.split()
    assert raw[0] != oracle[0].split()[0] and raw[6:] == ["18"] * 3


def test_c_extension_reads_embedded_code_and_not_sealed_paths(tmp_path, runtime, cprobe):
    world, code = sealed_world(tmp_path, runtime)
    measured = tmp_path / "measured-mod.py"
    measured.write_text(MEASURED_MOD)
    oracle = subprocess.run([str(REAL_PYTHON), "-c", CEXT_PROBE, str(cprobe), str(measured)],
                            capture_output=True, text=True, check=True).stdout.splitlines()
    result = world.python_code(CEXT_PROBE, str(cprobe), str(code / "mod.py"), str(code / "json.py"),
                               str(code / "templates" / "planted.html"))
    lines = result.stdout.splitlines()
    assert lines[0] == oracle[0], result.stderr  # the measured mod.py, not the planted one on disk
    assert lines[1:] == [" ".join(["ENOENT"] * 9)] * 2


def test_c_extension_writes_reach_the_volume_protected(world, cprobe):
    # fopen("w"), freopen("w") and syscall(SYS_openat) + syscall(SYS_close): each file is
    # protected again when C code closes it, and a new process reads what was written; remove()
    # takes a file out of the volume (its record too: the volume still opens).
    hows = ["fopen", "freopen", "syscall"]
    world.python_code("import sys; sys.path.insert(0, sys.argv[1]); import cprobe\n"
                      "for how in sys.argv[3:]: cprobe.write_file(sys.argv[2] + '/' + how + '.txt', how, b'written by ' + how.encode())\n"
                      "cprobe.remove_file(sys.argv[2] + '/blob.bin')",
                      str(cprobe), str(world.volume / "sub"), *hows)
    again = world.python_code("import os, sys\nfor how in sys.argv[2:]: print(open(sys.argv[1] + '/' + how + '.txt').read())\n"
                              "print(sorted(os.listdir(sys.argv[1])))", str(world.volume / "sub"), *hows)
    assert again.stdout.splitlines() == [f"written by {how}" for how in hows] + [
        str(sorted(f"{how}.txt" for how in hows))], again.stderr
    assert not (world.volume / "sub" / "blob.bin").exists()
    shield = Shield(world.fspf_path, world.key, bytes.fromhex(world.tag()), root="/")
    stored = [str(p) for p in world.volume.rglob("*") if p.is_file() and p.name not in (".sconify.fspf", ".sconify.lock")]
    assert not shield.verify_all(present=stored).problems  # no record left of what remove() removed
    for how in hows:
        assert b"written" not in (world.volume / "sub" / f"{how}.txt").read_bytes()


# --- One volume, many processes (issue 23): each commit is a read-modify-write under the
# volume's lock onto the latest fspf, and a process sees what the others committed -----------

MP_WORKER = "def write(job):\n    path, n = job\n    with open(path, 'w') as f: f.write('written by worker %d\\n' % n)\n    return n\n"
MP_PARENT = (
    "import __main__, multiprocessing, os, sys\n"
    "del __main__.__file__  # the driver is no script a spawned worker can run again\n"
    "sys.path.insert(0, sys.argv[2])\n"
    "import mpwork\n"
    "vol = sys.argv[1]\n"
    "with multiprocessing.get_context(sys.argv[3]).Pool(4) as pool:\n"
    "    print(pool.map(mpwork.write, [(vol + '/mp-%d.txt' % n, n) for n in range(4)], chunksize=1))\n"
    "print([open(vol + '/mp-%d.txt' % n).read().strip() for n in range(4)])\n"
    "print([os.stat(vol + '/mp-%d.txt' % n).st_size for n in range(4)])\n"
    "open(vol + '/parent.txt', 'w').write('the parent, after its workers\\n')  # its commit keeps theirs\n"
)


def volume_records(world) -> dict[str, bytes]:
    """What the fspf on disk records (at the tag the keys file holds), each file's plaintext."""
    shield = Shield(world.fspf_path, world.key, bytes.fromhex(world.tag()), root="/")
    return {f.path: shield.read(f.path) for f in shield.fspf.files}


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing_workers_writes_are_seen_by_the_parent(world, method):
    mods = world.root / "mods"
    mods.mkdir()
    (mods / "mpwork.py").write_text(MP_WORKER)
    result = world.python_code(MP_PARENT, str(world.volume), str(mods), method, env={"SCONIFY_LOG": "stderr"})
    lines = result.stdout.splitlines()
    assert lines[0] == "[0, 1, 2, 3]", result.stderr
    assert lines[1] == str([f"written by worker {n}" for n in range(4)]), result.stderr
    assert lines[2] == str([len("written by worker 0\n")] * 4)
    assert "sconify-shield" not in result.stderr
    again = world.python_code("import os, sys\nvol = sys.argv[1]\n"
                              "print(sorted(os.listdir(vol)))\n"
                              "print(open(vol + '/mp-3.txt').read().strip(), open(vol + '/parent.txt').read().strip())",
                              str(world.volume))
    names = [f"mp-{n}.txt" for n in range(4)]
    assert again.stdout.splitlines() == [str(sorted(["count.txt", "parent.txt", "sub", *names])),
                                         "written by worker 3 the parent, after its workers"], again.stderr
    records = volume_records(world)
    for n in range(4):
        assert records[str(world.volume / f"mp-{n}.txt")] == f"written by worker {n}\n".encode()
        assert b"written by" not in (world.volume / f"mp-{n}.txt").read_bytes()
    assert str(world.volume / "parent.txt") in records and str(world.volume / "count.txt") in records
    assert not list(world.volume.glob(".sconify-tmp.*"))
    assert (world.volume / ".sconify.lock").exists()  # hidden from the service's listing above


SQLITE_WORKER = (
    "import sqlite3\n"
    "def insert(path, mode, first, count, barrier):\n"
    "    db = sqlite3.connect(path, timeout=60)\n"
    "    db.execute('pragma journal_mode=' + mode)\n"
    "    barrier.wait(60)  # all connected before any inserts: the writers overlap\n"
    "    for i in range(first, first + count):\n"
    "        with db:\n"
    "            db.execute('insert into t values (?, ?)', (i, 'secret-row-%06d' % i))\n"
    "    db.close()\n"
)
SQLITE_PARENT = (
    "import __main__, multiprocessing, sqlite3, sys\n"
    "del __main__.__file__  # the driver is no script a spawned worker can run again\n"
    "sys.path.insert(0, sys.argv[2])\n"
    "import sqlwork\n"
    "path, mode, method = sys.argv[1], sys.argv[3], sys.argv[4]\n"
    "db = sqlite3.connect(path)\n"
    "db.execute('pragma journal_mode=' + mode)\n"
    "db.execute('create table t(id integer primary key, body text)')\n"
    "db.commit()\n"
    "db.close()\n"
    "context = multiprocessing.get_context(method)\n"
    "barrier = context.Barrier(4)\n"
    "workers = [context.Process(target=sqlwork.insert, args=(path, mode, 1 + k * 1000, 25, barrier)) for k in range(4)]\n"
    "for w in workers: w.start()\n"
    "for w in workers: w.join()\n"
    "db = sqlite3.connect(path)\n"
    "print([w.exitcode for w in workers], db.execute('pragma integrity_check').fetchone()[0],\n"
    "      db.execute('select count(*), sum(id) from t').fetchone())\n"
)


@pytest.mark.parametrize("mode, method", [("delete", "fork"), ("wal", "spawn"), ("wal", "fork"), ("delete", "spawn")])
def test_sqlite_four_processes_share_one_database_under_the_launcher_as_pid_1(world, mode, method):
    """The launcher as PID 1 (as in a container) holds one plaintext memfd per open volume file:
    four processes inserting into one database lose no row, as on a plain directory (the oracle),
    and what they committed is ciphertext on disk that a later process reads."""
    mods = world.root / "mods"
    mods.mkdir()
    (mods / "sqlwork.py").write_text(SQLITE_WORKER)
    plain = world.root / "plain-db"
    plain.mkdir()
    expected = world.python_code(SQLITE_PARENT, str(plain / "t.db"), str(mods), mode, method).stdout
    ids = [1 + k * 1000 + i for k in range(4) for i in range(25)]
    assert expected == f"[0, 0, 0, 0] ok {(len(ids), sum(ids))}\n"
    path = str(world.volume / "t.db")
    result = world.python_code(SQLITE_PARENT, path, str(mods), mode, method, env={"SCONIFY_LOG": "stderr"}, pid1=True)
    assert result.stdout == expected, result.stderr
    assert "sconify-shield" not in result.stderr
    again = world.python_code("import sqlite3, sys\nprint(sqlite3.connect(sys.argv[1]).execute("
                              "'select count(*), sum(id) from t').fetchone())", path)
    assert again.stdout == f"{(len(ids), sum(ids))}\n", again.stderr
    for stored in world.volume.iterdir():
        if stored.is_file():
            assert b"secret-row" not in stored.read_bytes(), stored



@pytest.mark.parametrize("mode, method", [("delete", "fork"), ("wal", "spawn")])
def test_sqlite_four_processes_share_one_database_in_tmp_under_the_launcher_as_pid_1(world, mode, method):
    """The same in the start's /tmp (an ephemeral region shared by the measured tree): its files
    are in the launcher's plaintext cache too, so the workers' locks and writes meet."""
    mods = world.root / "mods"
    mods.mkdir()
    (mods / "sqlwork.py").write_text(SQLITE_WORKER)
    ids = [1 + k * 1000 + i for k in range(4) for i in range(25)]
    result = world.python_code(SQLITE_PARENT, str(world.tmp / "t.db"), str(mods), mode, method,
                               env={"SCONIFY_LOG": "stderr"}, pid1=True)
    assert result.stdout == f"[0, 0, 0, 0] ok {(len(ids), sum(ids))}\n", result.stderr
    assert "sconify-shield" not in result.stderr
    stored = [p for p in world.tmp.rglob("*") if p.is_file()]
    assert stored and not any(b"secret-row" in p.read_bytes() for p in stored)



FD_PASSING = (
    "import __main__, multiprocessing, os, sys\n"
    "from multiprocessing import reduction\n"
    "del __main__.__file__\n"
    "sys.path.insert(0, sys.argv[2])\n"
    "import fdwork\n"
    "path = sys.argv[1]\n"
    "context = multiprocessing.get_context(sys.argv[3])\n"
    "conn, child_conn = context.Pipe(duplex=True)\n"
    "p = context.Process(target=fdwork.write, args=(child_conn, b'written by the child through a passed fd'))\n"
    "p.start()\n"
    "with open(path, 'wb') as f:\n"
    "    reduction.send_handle(conn, f.fileno(), p.pid)\n"
    "p.join()\n"
    "print(p.exitcode, open(path, 'rb').read())\n"
)
FD_WORKER = (
    "import os\n"
    "from multiprocessing import reduction\n"
    "def write(conn, data):\n"
    "    fd = reduction.recv_handle(conn)\n"
    "    os.write(fd, data)\n"
    "    os.close(fd)\n"
)


@pytest.mark.parametrize("where, method", [("volume", "spawn"), ("tmp", "fork")])
def test_a_descriptor_passed_to_another_process_keeps_its_writes(world, where, method):
    """multiprocessing's send_handle (SCM_RIGHTS) of an open region file, as CPython's
    test_fd_transfer does it: the parent closes its descriptor first, the child writes through
    the one it received and closes it; what it wrote is the file's, for the parent and for a
    later process (docs/runtime.md, "One file in many processes")."""
    mods = world.root / "mods"
    mods.mkdir()
    (mods / "fdwork.py").write_text(FD_WORKER)
    path = str((world.volume if where == "volume" else world.tmp) / "passed.bin")
    result = world.python_code(FD_PASSING, path, str(mods), method, env={"SCONIFY_LOG": "stderr"}, pid1=True)
    assert result.stdout == "0 b'written by the child through a passed fd'\n", result.stderr
    assert "sconify-shield" not in result.stderr
    assert b"written by the child" not in Path(path).read_bytes()
    if where == "volume":
        again = world.python_code("import sys\nprint(open(sys.argv[1], 'rb').read())", path)
        assert again.stdout == "b'written by the child through a passed fd'\n", again.stderr



CREATE_RACE_WORKER = (
    "import os\n"
    "def race(d, n, barrier, results):\n"
    "    barrier.wait(60)\n"
    "    won = 0\n"
    "    for k in range(40):\n"
    "        try:\n"
    "            os.close(os.open(f'{d}/excl-{k}', os.O_CREAT | os.O_EXCL | os.O_WRONLY))\n"
    "            won += 1\n"
    "        except FileExistsError:\n"
    "            pass\n"
    "        fd = os.open(f'{d}/appended-{k}', os.O_CREAT | os.O_APPEND | os.O_WRONLY)\n"
    "        os.write(fd, b'process %d\\n' % n)\n"
    "        os.close(fd)\n"
    "    results.put(won)\n"
)
CREATE_RACE = (
    "import __main__, multiprocessing, os, sys\n"
    "del __main__.__file__\n"
    "sys.path.insert(0, sys.argv[2])\n"
    "import racework\n"
    "d = sys.argv[1]\n"
    "os.makedirs(d, exist_ok=True)\n"
    "context = multiprocessing.get_context('fork')\n"
    "barrier, results = context.Barrier(4), context.Queue()\n"
    "ps = [context.Process(target=racework.race, args=(d, n, barrier, results)) for n in range(4)]\n"
    "for p in ps: p.start()\n"
    "won = sum(results.get(timeout=120) for p in ps)\n"
    "for p in ps: p.join()\n"
    "lines = [sorted(open(f'{d}/appended-{k}', 'rb').read().splitlines()) for k in range(40)]\n"
    "print(won, all(l == [b'process %d' % n for n in range(4)] for l in lines))\n"
)


@pytest.mark.parametrize("where", ["volume", "tmp"])
def test_processes_creating_one_file_at_once_get_the_kernels_answers(world, where):
    """Four processes create the same files at once, as on a plain directory (the oracle): one
    O_CREAT|O_EXCL wins each name (a lock file), and O_CREAT|O_APPEND by all four keeps all
    four lines: a create that finds the file made meanwhile by another process opens it, it
    never empties it, and a copy read before another process's commit is not the one shared."""
    mods = world.root / "mods"
    mods.mkdir()
    (mods / "racework.py").write_text(CREATE_RACE_WORKER)
    plain = world.root / "plain-race"
    assert world.python_code(CREATE_RACE, str(plain), str(mods)).stdout == "40 True\n"
    d = str((world.volume if where == "volume" else world.tmp) / "race")
    result = world.python_code(CREATE_RACE, d, str(mods), env={"SCONIFY_LOG": "stderr"}, pid1=True)
    assert result.stdout == "40 True\n", result.stderr
    assert "sconify-shield" not in result.stderr


POSIX_SPAWN = (
    "import os, sys\n"
    "d, tmp, how, driver, embedded = sys.argv[1:6]\n"
    "open(tmp + '/from-parent.txt', 'w').write('parent wrote this in /tmp')\n"
    "child = ('import sys; print(sys.stdin.readline().strip(), open(sys.argv[1] + \"/count.txt\").read().strip(), '\n"
    "         'open(sys.argv[2] + \"/from-parent.txt\").read())')\n"
    "r, w = os.pipe()\n"
    "spawn = os.posix_spawn if how == 'path' else os.posix_spawnp\n"
    "program = sys.executable if how == 'path' else os.path.basename(sys.executable)\n"
    "env = dict(os.environ, PATH=os.path.dirname(sys.executable) + ':' + os.environ['PATH'])\n"
    "os.environ['PATH'] = env['PATH']  # posix_spawnp searches the caller's PATH\n"
    "pid = spawn(program, [sys.executable, driver, child, d, tmp], env,\n"
    "            file_actions=[(os.POSIX_SPAWN_OPEN, 0, embedded, os.O_RDONLY, 0), (os.POSIX_SPAWN_DUP2, w, 1),\n"
    "                          (os.POSIX_SPAWN_CLOSE, r)])\n"
    "os.close(w)\n"
    "out = b''\n"
    "while chunk := os.read(r, 4096): out += chunk\n"
    "print(out.decode().strip(), os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))\n"
    "try:\n"
    "    spawn('/nonexistent/program', ['x'], env)\n"
    "except OSError as e:\n"
    "    print(type(e).__name__)\n"
)


@pytest.mark.parametrize("how", ["path", "search"])
def test_a_measured_program_started_with_posix_spawn_gets_the_grant_and_the_embedded_files(world, how):
    """os.posix_spawn(p) of the measured executable (CPython's subprocess takes this way with
    close_fds=False): the child gets the grant (it reads the volume and the parent's /tmp), and
    a file action that opens an embedded file opens it through the shield; a program that does
    not exist is still the spawn's error."""
    result = world.python_code(POSIX_SPAWN, str(world.volume), str(world.tmp), how, world.driver,
                               EMBEDDED_ROOT + "/pkg/__init__.py", env={"SCONIFY_LOG": "stderr"})
    assert result.stdout == "NAME = 'embedded package' 0 parent wrote this in /tmp 0\nFileNotFoundError\n", result.stderr
    assert "sconify-shield" not in result.stderr



SPAWN_STDOUT = (
    "import os, sys\n"
    "out, driver = sys.argv[1:3]\n"
    "actions = [(os.POSIX_SPAWN_OPEN, 1, out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)]\n"
    "pid = os.posix_spawn(sys.executable, [sys.executable, driver, 'import sys; sys.stdout.write(\"hello\")'],\n"
    "                     os.environ, file_actions=actions)\n"
    "print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), open(out).read())\n"
)


@pytest.mark.parametrize("where", ["volume", "tmp"])
def test_a_region_file_a_child_inherits_as_its_stdout_keeps_what_it_writes(world, where):
    """CPython's test_posix test_open_file: the spawn opens the child's stdout in a region, only
    the child holds it, and the child writes and exits. The child's shield takes an inherited
    descriptor of a cached file as its own (cache_adopt_inherited), so its exit commits it."""
    out = str((world.volume if where == "volume" else world.tmp) / "child-stdout.txt")
    result = world.python_code(SPAWN_STDOUT, out, world.driver, env={"SCONIFY_LOG": "stderr"}, pid1=True)
    assert result.stdout == "0 hello\n", result.stderr
    assert "sconify-shield" not in result.stderr
    assert b"hello" not in Path(out).read_bytes()


SHARED_FILE = (
    "import fcntl, mmap, os, sys\n"
    "path = sys.argv[1]\n"
    "with open(path, 'w') as f: f.write('0' * 4096)\n"
    "a = os.open(path, os.O_RDWR)\n"
    "fcntl.lockf(a, fcntl.LOCK_EX)\n"
    "r, w = os.pipe()\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    b = os.open(path, os.O_RDWR | os.O_APPEND)\n"
    "    try:\n"
    "        fcntl.lockf(b, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
    "        print('child: locked')\n"
    "    except OSError:\n"
    "        print('child: the parent holds the lock')\n"
    "    m = mmap.mmap(b, 4096)\n"
    "    m[:5] = b'child'\n"
    "    os.write(b, b'appended')\n"
    "    m.close()\n"
    "    os.close(b)\n"
    "    sys.stdout.flush()\n"
    "    os._exit(0)\n"
    "os.pwrite(a, b'parent', 5)\n"
    "os.waitpid(pid, 0)\n"
    "print('parent sees', os.pread(a, 11, 0), os.fstat(a).st_size, os.pread(a, 8, 4096))\n"
    "os.close(a)\n"
)


@pytest.mark.parametrize("pid1", [True, False])
def test_a_file_open_in_two_processes_is_one_file(world, pid1):
    """fcntl locks, a shared mapping, O_APPEND and plain writes of two processes meet in one
    plaintext, as on a plain directory: the launcher's as PID 1, its keeper's when it execs the
    service; the keeper is gone with the service."""
    plain = world.root / "plain-shared"
    plain.mkdir()
    expected = world.python_code(SHARED_FILE, str(plain / "f")).stdout
    assert expected.splitlines()[0] == "child: the parent holds the lock"
    assert expected.splitlines()[-1] == "parent sees b'childparent' 4104 b'appended'"
    path = str(world.volume / "shared.txt")
    result = world.python_code(SHARED_FILE, path, env={"SCONIFY_LOG": "stderr"}, pid1=pid1)
    assert result.stdout == expected, result.stderr
    again = world.python_code("import sys\nd = open(sys.argv[1], 'rb').read()\nprint(d[:11], len(d), d[-8:])", path)
    assert again.stdout == "b'childparent' 4104 b'appended'\n"
    assert b"childparent" not in (world.volume / "shared.txt").read_bytes()
    if not pid1:  # no keeper left behind (it serves until the service exits)
        for _ in range(50):
            keepers = subprocess.run(["pgrep", "-f", str(world.runtime.launcher)], capture_output=True, text=True)
            if not keepers.stdout:
                break
            time.sleep(0.1)
        assert keepers.stdout == ""


CONCURRENT = (
    "import os, sys\n"
    "vol = sys.argv[1]\n"
    "go_r, go_w = os.pipe()\n"
    "pids = []\n"
    "for w in range(2):\n"
    "    pid = os.fork()\n"
    "    if pid == 0:\n"
    "        os.close(go_w)\n"
    "        os.read(go_r, 1)  # both start at once\n"
    "        for i in range(50):\n"
    "            with open(vol + '/c-%d-%02d.txt' % (w, i), 'w') as f: f.write('process %d file %d' % (w, i))\n"
    "        os._exit(0)\n"
    "    pids.append(pid)\n"
    "os.close(go_w)\n"
    "print([os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids])\n"
    "print(len([n for n in os.listdir(vol) if n.startswith('c-')]))\n"
    "print(sum(open(vol + '/c-%d-%02d.txt' % (w, i)).read() == 'process %d file %d' % (w, i) "
    "for w in range(2) for i in range(50)))\n"
)


def test_two_processes_committing_at_once_lose_nothing(world):
    result = world.python_code(CONCURRENT, str(world.volume), env={"SCONIFY_LOG": "stderr"})
    assert result.stdout.splitlines() == ["[0, 0]", "100", "100"], result.stderr
    assert "sconify-shield" not in result.stderr
    records = volume_records(world)
    written = {p: data for p, data in records.items() if os.path.basename(p).startswith("c-")}
    assert written == {str(world.volume / f"c-{w}-{i:02d}.txt"): f"process {w} file {i}".encode()
                       for w in range(2) for i in range(50)}
    again = world.python_code("import os, sys\nprint(sum(open(os.path.join(sys.argv[1], n)).read().startswith('process') "
                              "for n in os.listdir(sys.argv[1]) if n.startswith('c-')))", str(world.volume))
    assert again.stdout == "100\n", again.stderr


def test_parent_sees_what_a_child_wrote_and_rewrote(world):
    # A forked child writes a new file and rewrites one the parent has read: the parent's stat
    # and open see both (no EACCES "not recorded", no EIO from the old record); a program the
    # parent starts afterwards opens the volume at its new tag; the parent's own commit keeps
    # the child's files.
    read = "import sys\nprint(open(sys.argv[1]).read())"
    code = (
        "import os, subprocess, sys\n"
        "vol = sys.argv[1]\n"
        "print(open(vol + '/count.txt').read().strip())\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    open(vol + '/child.txt', 'w').write('from the child')\n"
        "    open(vol + '/count.txt', 'w').write('41\\n')\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "print(os.path.exists(vol + '/child.txt'), os.stat(vol + '/child.txt').st_size, os.stat(vol + '/count.txt').st_size)\n"
        "print(open(vol + '/child.txt').read(), open(vol + '/count.txt').read().strip())\n"
        "open(vol + '/count.txt', 'w').write('42\\n')\n"
        "print(subprocess.run([sys.executable, %r, %r, vol + '/child.txt'], capture_output=True, text=True).stdout.strip())\n"
        % (world.driver, read))
    result = world.python_code(code, str(world.volume), env={"SCONIFY_LOG": "stderr"})
    assert result.stdout.splitlines() == ["0", "True 14 3", "from the child 41", "from the child"], result.stderr
    assert "sconify-shield" not in result.stderr
    records = volume_records(world)
    assert records[str(world.volume / "child.txt")] == b"from the child"
    assert records[str(world.volume / "count.txt")] == b"42\n"
    assert b"child" not in (world.volume / "child.txt").read_bytes()


def test_fspf_rolled_back_while_the_service_runs_is_refused(world):
    # Another program (not measured) puts the fspf's older copy back after a commit: the
    # service keeps what it knows, its next commit is refused (EIO) and records nothing, and
    # the next start refuses the rolled-back volume.
    saved = world.root / "fspf.old"
    code = (
        "import errno, os, subprocess, sys\n"
        "vol, fspf, saved = sys.argv[1:4]\n"
        "subprocess.run(['cp', fspf, saved], check=True)\n"
        "open(vol + '/a.txt', 'w').write('a')\n"
        "subprocess.run(['cp', saved, fspf], check=True)\n"
        "print(open(vol + '/a.txt').read())\n"
        "try:\n    open(vol + '/b.txt', 'w').write('b')\nexcept OSError as e: print(errno.errorcode[e.errno])\n")
    result = world.python_code(code, str(world.volume), str(world.fspf_path), str(saved), env={"SCONIFY_LOG": "stderr"})
    assert result.stdout.splitlines() == ["a", "EIO"], result.stderr
    assert "which the keys file does not record" in result.stderr
    tag = world.tag()
    assert world.fspf_path.read_bytes()[-16:].hex() != tag  # the old one, still on disk
    refused = world.python_code("print(1)", check=False)
    assert refused.returncode == 2 and "rollback" in refused.stderr


def test_own_copy_parent_sees_what_a_child_wrote(world):
    # The container's own copy: a reloaded fspf is judged by the container's state file.
    code = (
        "import os, sys\n"
        "vol = sys.argv[1]\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    open(vol + '/child.txt', 'w').write('from the child')\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "print(open(vol + '/child.txt').read())\n"
        "open(vol + '/parent.txt', 'w').write('from the parent')\n")
    result = own_copy_run(world, code, str(world.volume), env={"SCONIFY_LOG": "stderr"})
    assert result.stdout == "from the child\n", result.stderr
    assert "sconify-shield" not in result.stderr
    state = json.loads((world.volume / ".sconify.state").read_text())
    shield = Shield(world.fspf_path, world.key, bytes.fromhex(state["fspf_tag"]), root="/")
    assert shield.read(str(world.volume / "child.txt")) == b"from the child"
    assert shield.read(str(world.volume / "parent.txt")) == b"from the parent"


def test_reader_keeps_up_with_a_rewriting_process(world):
    # A child rewrites one file over and over while the parent reads it: every read gives one
    # whole version, or the empty file each rewrite commits first (open with O_TRUNC), never EIO:
    # a stored file replaced after the parent's reload is read again at its new record.
    code = (
        "import errno, os, sys\n"
        "p = sys.argv[1] + '/count.txt'\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    for i in range(1, 151): open(p, 'w').write('version %03d\\n' % i * 50)\n"
        "    os._exit(0)\n"
        "bad, seen = [], set()\n"
        "while True:\n"
        "    done = os.waitpid(pid, os.WNOHANG)[0] == pid\n"
        "    try:\n"
        "        text = open(p).read()\n"
        "        if text not in ('0\\n', ''): seen.add(text[:11]); bad += [text[:20]] if text != text[:12] * 50 else []\n"
        "    except OSError as e: bad.append(errno.errorcode[e.errno])\n"
        "    if done: break\n"
        "print(bad, len(seen) > 1, open(p).read()[:11])\n")
    result = world.python_code(code, str(world.volume), env={"SCONIFY_LOG": "stderr"})
    assert result.stdout == "[] True version 150\n", result.stderr
    assert "sconify-shield" not in result.stderr


def add_volume(world, name: str) -> Path:
    """A second encrypted volume (empty), in the runtime config and the keys file."""
    path = world.root / name
    path.mkdir()
    fspf = Fspf.create()
    fspf.add_region(str(path), kind="kernel", protection="encrypted")
    key, tag = fspf.encrypt_to(str(path / ".sconify.fspf"))
    entry = {"path": str(path), "fspf_path": str(path / ".sconify.fspf"), "protection": "encrypted"}
    keys = json.loads(world.keys.read_text())
    keys["volumes"].append({**entry, "fspf_key": key.hex(), "fspf_tag": tag.hex()})
    world.keys.write_text(json.dumps(keys))
    parameters, mrenclave, file_sha256, volumes = world._config
    world.write_config(parameters, mrenclave, file_sha256, sorted([*volumes, entry], key=lambda v: v["path"]),
                       json.loads(world.config.read_text())["ephemeral"])
    return path


def test_two_volumes_committed_at_once_keep_both_tags(world):
    # Two processes commit to two volumes at the same time: each rewrites the keys file with its
    # volume's tag, one after the other, so neither drops the other's (the next start opens both).
    other = add_volume(world, "vol2")
    code = CONCURRENT.replace("vol + '/c-%d-%02d.txt'", "vols[w] + '/c-%d-%02d.txt'").replace(
        "vol = sys.argv[1]\n", "vol = sys.argv[1]\nvols = sys.argv[1:3]\n")
    code = code[:code.index("print(len(")]
    result = world.python_code(code, str(world.volume), str(other), env={"SCONIFY_LOG": "stderr"})
    assert result.stdout == "[0, 0]\n", result.stderr
    again = world.python_code("import os, sys\nprint([len([n for n in os.listdir(v) if n.startswith('c-')]) "
                              "for v in sys.argv[1:]])", str(world.volume), str(other))
    assert again.stdout == "[50, 50]\n", again.stderr
