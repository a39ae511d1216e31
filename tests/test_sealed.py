"""Which code roots the runtime seals (``sconify.conversion.sealed``), on the Debian demo images: every
place the interpreter searches for code at start, present in the image or not, and the files
left there as not code (visible to the service from the disk)."""

from __future__ import annotations

import pytest

from sconify.conversion.codepaths import code_files, code_roots, find_service
from sconify.image.rootfs import RootFS
from sconify.image.transports import read_image
from sconify.conversion.sealed import embedded_packages, left_files, sealed_roots, shallow_roots


def roots_of(layout):
    image = read_image(f"oci:{layout}:latest")
    fs = RootFS.from_image(image)
    return fs, code_roots(fs, find_service(fs, image.config))


@pytest.fixture(scope="module")
def python_demo(python_image):
    return roots_of(python_image)


@pytest.fixture(scope="module")
def node_demo(node_image):
    return roots_of(node_image)


def test_python_roots_include_the_places_site_would_use_if_they_existed(python_demo):
    fs, roots = python_demo
    assert sealed_roots(fs, roots) == [
        "/app", "/root/.local/lib/python3.11/site-packages", "/usr/lib/python3.11",
        "/usr/lib/python3.11/dist-packages", "/usr/lib/python3.11/lib-dynload", "/usr/lib/python3/dist-packages",
        "/usr/lib/python311.zip", "/usr/local/lib/python3.11/dist-packages",
    ]
    assert shallow_roots(roots) == []


def test_left_files_are_the_non_code_files_outside_the_data(python_demo):
    fs, roots = python_demo
    left = left_files(fs, sealed_roots(fs, roots), code_files(fs, roots), roots.extensions, ["/app/data"])
    assert "/app/config.json" in left and "/usr/lib/python3.11/LICENSE.txt" in left
    assert not [p for p in left if p.startswith("/app/data/") or p.endswith((".py", ".pyc", ".so", ".pth"))]


def test_node_roots_include_the_missing_global_folders(node_demo):
    fs, roots = node_demo
    sealed = sealed_roots(fs, roots)
    assert {"/app", "/app/node_modules", "/node_modules", "/root/.node_modules", "/usr/share/nodejs"} <= set(sealed)
    left = left_files(fs, sealed, code_files(fs, roots), roots.extensions, ["/app/data"])
    assert "/app/node_modules/debug/README.md" in left
    assert not [p for p in left if p.endswith((".js", ".json", ".node"))]


def test_embedded_packages_of_a_shallow_root():
    embedded = ["usr/local/bin/tool.py", "usr/local/bin/pkg/__init__.py", "usr/local/bin/pkg/sub/__init__.py"]
    assert embedded_packages(["/usr/local/bin"], embedded) == ["/usr/local/bin/pkg"]
    assert embedded_packages(["/"], ["pkg/__init__.py", "usr/lib/x.py"]) == ["/pkg"]
