"""Progress of registry transfers: what the transport reports to ``RegistryOptions.on_blob`` for
each blob pushed or pulled (against a real registry, Debian's docker-registry), the CLI's bars
drawn from it, and a terminal as the only place they appear."""

from __future__ import annotations

import io
import os
import pty
import re
import subprocess
import sys
import threading
from dataclasses import dataclass, field

import pytest
from registryd import REGISTRY, Registry, start_registry, stop
from rich.console import Console
from rich.progress import Progress
from test_registry import PASSWORD, USER, FakeRegistry, small_image

from sconify.cli.output import BlobBars, human_size, progress_display
from sconify.image.registry.client import RegistryClient, RegistryUnavailable
from sconify.image.registry.options import RegistryOptions
from sconify.image.transports import read_image, write_image

pytestmark = pytest.mark.skipif(REGISTRY is None, reason="docker-registry is not installed (.ci/run installs it)")

# Variables by which rich is told to draw whatever stderr is: the tests see what a user sees.
RICH_OVERRIDES = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")


def user_env(**extra: str) -> dict[str, str]:
    return {**{name: value for name, value in os.environ.items() if name not in RICH_OVERRIDES}, **extra}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry-progress")
    process, host = start_registry(root)
    yield Registry(host, root / "data")
    stop(process)


@dataclass
class Transfer:
    direction: str
    digest: str
    size: int
    advances: list[int] = field(default_factory=list)
    ended: bool = False

    def advance(self, amount: int) -> None:
        assert not self.ended, f"{self.digest} advanced after its end"
        self.advances.append(amount)

    def end(self) -> None:
        assert not self.ended, f"{self.digest} ended twice"
        self.ended = True

    @property
    def sent(self) -> int:
        return sum(self.advances)


class Recorder:
    """An ``on_blob`` that keeps every transfer reported (from the upload threads too)."""

    def __init__(self) -> None:
        self.transfers: list[Transfer] = []
        self._lock = threading.Lock()

    def __call__(self, direction: str, digest: str, size: int) -> Transfer:
        transfer = Transfer(direction, digest, size)
        with self._lock:
            self.transfers.append(transfer)
        return transfer

    def finished(self) -> list[tuple[str, str, int, int]]:
        """(direction, digest, size, bytes reported) of every transfer, each ended."""
        assert all(t.ended for t in self.transfers), self.transfers
        return sorted((t.direction, t.digest, t.size, t.sent) for t in self.transfers)


def short(digest: str) -> str:
    return digest[:len("sha256:") + 12] + "…"


# --- what the transport reports -------------------------------------------------------------------


def test_a_push_reports_each_uploaded_blob_from_its_size_to_its_last_byte_and_no_blob_already_there(
        registry, tmp_path):
    image = small_image(tmp_path, os.urandom(1 << 20))  # incompressible: a 1 MiB blob, sent in pieces
    first = Recorder()
    result = write_image(image, registry.ref("progress/push:1"), registry=RegistryOptions(on_blob=first))
    stored = registry.blobs()
    uploaded = (*result.layer_digests, result.config_digest)
    assert first.finished() == sorted(("push", d, stored[d], stored[d]) for d in uploaded)
    layer = next(t for t in first.transfers if t.digest == result.layer_digests[0])
    assert len(layer.advances) > 1, "reported as the bytes go, not once at the end"

    again = Recorder()
    pushed = write_image(image, registry.ref("progress/push:2"), registry=RegistryOptions(on_blob=again))
    assert pushed.push.existing_blobs == 2 and again.transfers == []

    mounting = Recorder()
    from_registry = read_image(registry.ref("progress/push:1"))
    pushed = write_image(from_registry, registry.ref("progress/other:1"), registry=RegistryOptions(on_blob=mounting))
    assert pushed.push.mounted_blobs == 1  # the layer: no bar; the config is uploaded (HEAD is per repository)
    assert mounting.finished() == [("push", result.config_digest, stored[result.config_digest],
                                    stored[result.config_digest])]


def test_a_retried_upload_is_reported_anew(registry, tmp_path, monkeypatch):
    image = small_image(tmp_path, os.urandom(256 << 10))
    request = RegistryClient.request
    failed: list[str] = []

    def first_put_fails_after_its_body(client, method, path, **kwargs):
        if method == "PUT" and "data" in kwargs and not failed:
            while kwargs["data"].read(1 << 16):
                pass
            failed.append(path)
            raise RegistryUnavailable("registry answered 503 (in the test)")
        return request(client, method, path, **kwargs)

    monkeypatch.setattr(RegistryClient, "request", first_put_fails_after_its_body)
    recorder = Recorder()
    result = write_image(image, registry.ref("progress/retry:1"), registry=RegistryOptions(on_blob=recorder))
    layer, size = result.layer_digests[0], image.layers[0].size
    assert failed and result.push.uploaded_blobs == 2
    assert [(t.digest, t.sent, t.ended) for t in recorder.transfers if t.digest == layer] == [
        (layer, size, True), (layer, size, True)]


def test_a_pull_reports_each_layer_download_to_its_size_and_a_resumed_download_once():
    blob = os.urandom(3 << 20)
    fake = FakeRegistry(blob)  # breaks the first download off halfway, then answers the Range request
    try:
        recorder = Recorder()
        image = read_image(f"docker://{fake.host}/app:1",
                           registry=RegistryOptions(creds=f"{USER}:{PASSWORD}", on_blob=recorder))
        assert recorder.transfers == []  # the config is read, no layer yet
        with image.layers[0].open_blob() as stream:
            assert stream.read() == blob
            assert fake.broken_off  # and the transfer ended with the last byte, before the stream is closed
            assert recorder.finished() == [("pull", image.layers[0].digest, len(blob), len(blob))]
    finally:
        fake.close()


def test_a_copy_from_the_registry_reports_its_layer_downloads(registry, tmp_path):
    image = small_image(tmp_path, os.urandom(512 << 10))
    write_image(image, registry.ref("progress/pull:1"))
    recorder = Recorder()
    options = RegistryOptions(on_blob=recorder)
    write_image(read_image(registry.ref("progress/pull:1"), registry=options), f"oci:{tmp_path}/out:1",
                registry=options)
    layer = image.layers[0]
    assert {t.digest for t in recorder.transfers} == {layer.digest}
    assert ("pull", layer.digest, layer.size, layer.size) in recorder.finished()


# --- the CLI's bars -------------------------------------------------------------------------------


def render(progress: Progress) -> list[str]:
    console = Console(file=io.StringIO(), force_terminal=True, width=120, color_system=None)
    console.print(progress)
    return console.file.getvalue().splitlines()


class FramesAtEnd:
    """The CLI's bars as ``on_blob``, and the display rendered as each blob ends, before its bar
    goes (a push of small blobs is over before a live display refreshes)."""

    def __init__(self, progress: Progress) -> None:
        self.bars = BlobBars(progress)
        self.progress = progress
        self.frames: list[list[str]] = []

    def __call__(self, direction: str, digest: str, size: int):
        bar = self.bars(direction, digest, size)
        frames, progress = self.frames, self.progress

        class Drawn:
            advance = bar.advance

            def end(self) -> None:
                frames.append(render(progress))
                bar.end()

        return Drawn()


def test_the_bars_are_a_line_per_blob_with_its_short_digest_under_the_phase_and_go_when_it_is_done(
        registry, tmp_path):
    image = small_image(tmp_path, os.urandom(300 << 10))
    progress = progress_display(Console(file=io.StringIO(), force_terminal=True, width=120))
    progress.add_task("write image")
    drawn = FramesAtEnd(progress)
    result = write_image(image, registry.ref("progress/bars:1"), registry=RegistryOptions(on_blob=drawn))
    stored = registry.blobs()
    uploaded = (*result.layer_digests, result.config_digest)
    assert len(drawn.frames) == len(uploaded)
    for digest, frame in zip(sorted(uploaded), sorted(drawn.frames, key=lambda f: f[1])):
        assert re.sub(r"^\W+", "", frame[0]).startswith("write image"), frame  # after the spinner, in any of its frames
        label = f"push {short(digest)} {human_size(stored[digest])}"
        line = next((line for line in frame[1:] if label in line), None)
        assert line is not None, (label, frame)
        amount = re.search(r"([\d.]+)/([\d.]+) (bytes|KiB|MiB)", line)
        assert amount and amount[1] == amount[2], line  # the blob's bytes all went
    assert [task.description for task in progress.tasks] == ["write image"]


def run_on_a_terminal(*args: str) -> tuple[subprocess.CompletedProcess, str]:
    """``sconify ARGS`` with stderr on a pseudo-terminal: the run (stdout) and what the terminal got."""
    master, slave = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "sconify", *args], stdout=subprocess.PIPE, stderr=slave,
                               env=user_env(TERM="xterm", COLUMNS="120"))
    os.close(slave)
    shown = bytearray()
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    stdout = process.stdout.read().decode()
    process.stdout.close()
    returncode = process.wait(timeout=60)
    return subprocess.CompletedProcess(args, returncode, stdout, ""), shown.decode(errors="replace")


def run_piped(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sconify", *args], capture_output=True, text=True, timeout=60,
                          env=user_env(), check=False)


def test_copy_draws_the_bars_on_a_terminal_only_and_never_with_json(registry, tmp_path):
    image = small_image(tmp_path, os.urandom(256 << 10))
    layout = f"oci:{tmp_path}/layout:1"
    write_image(image, layout)
    layer = short(image.layers[0].digest)

    piped = run_piped("copy", layout, registry.ref("progress/piped:1"))
    assert piped.returncode == 0 and piped.stderr == "", piped.stderr
    assert re.fullmatch(r"sha256:[0-9a-f]{64}\n", piped.stdout)

    run, shown = run_on_a_terminal("copy", layout, registry.ref("progress/terminal:1"))
    assert run.returncode == 0 and run.stdout == piped.stdout
    assert f"push {layer}" in shown, shown

    run, shown = run_on_a_terminal("copy", "--json", layout, registry.ref("progress/json:1"))
    assert run.returncode == 0 and '"uploaded_blobs": 2' in run.stdout and shown == "", shown

    run, shown = run_on_a_terminal("copy", registry.ref("progress/terminal:1"), f"oci:{tmp_path}/pulled:1")
    assert run.returncode == 0 and f"pull {layer}" in shown, shown
    piped = run_piped("copy", registry.ref("progress/terminal:1"), f"oci:{tmp_path}/piped:1")
    assert piped.returncode == 0 and piped.stderr == "", piped.stderr


def test_an_upload_body_has_a_length_and_stops_when_the_push_is_given_up():
    """requests sends Content-Length (not chunks) for the body, and a given-up push stops it."""
    import threading

    import requests

    from sconify.image.registry.options import RegistryOptions
    from sconify.image.registry.push import PushCancelled, _Body

    cancel = threading.Event()
    body = _Body(io.BytesIO(b"x" * 5000), 5000, RegistryOptions().blob_transfer("push", "sha256:" + "0" * 64, 5000),
                 cancel)
    assert requests.utils.super_len(body) == 5000
    assert body.read(1000) == b"x" * 1000
    cancel.set()
    with pytest.raises(PushCancelled):
        body.read(1000)
