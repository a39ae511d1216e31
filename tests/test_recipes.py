"""Recipes and file selection, on the real Python and Node.js images."""

from __future__ import annotations

import pytest

from sconify.errors import UsageError
from sconify.image.rootfs import RootFS
from sconify.image.transports import read_image
from sconify.conversion.recipe import Placeholders, load_recipe, parse_recipe
from sconify.conversion.codepaths import find_service
from sconify.conversion.select import app_dir, interpreter_version, recipe_for, rel, select_code, select_data


@pytest.fixture(scope="module")
def python_fs(python_image):
    image = read_image(f"oci:{python_image}:latest")
    return image, RootFS.from_image(image)


@pytest.fixture(scope="module")
def node_fs(node_image):
    image = read_image(f"oci:{node_image}:latest")
    return image, RootFS.from_image(image)


def test_python_executable_comes_from_cmd_through_path_and_symlinks(python_fs):
    image, fs = python_fs
    service = find_service(fs, image.config)
    assert service.executable == "/usr/bin/python3.11"
    assert recipe_for(rel(service.executable)).name == "python"
    assert service.requested == "ENTRYPOINT/CMD python3"
    assert interpreter_version(rel(service.executable), fs) == "3.11"
    assert app_dir(image.config, fs) == "/app"


def test_node_executable_and_app_dir(node_fs):
    image, fs = node_fs
    service = find_service(fs, image.config)
    assert recipe_for(rel(service.executable)).name == "node" and service.executable.startswith("/usr/bin/node")
    assert app_dir(image.config, fs) == "/app"


def test_python_code_selection_takes_stdlib_and_app_but_not_tests_or_data(python_fs):
    image, fs = python_fs
    recipe = load_recipe("python")
    files = select_code(recipe, fs, Placeholders(version="3.11", app="/app"), exclude_roots=["/app/data"])
    assert "usr/lib/python3.11/json/__init__.py" in files
    assert "app/service/config.py" in files
    assert not any(f.startswith("app/data/") for f in files)
    assert not any("/__pycache__/" in f or "/test/" in f for f in files)


def test_node_code_selection_takes_node_modules_js_and_json_only(node_fs):
    image, fs = node_fs
    recipe = load_recipe("node")
    files = select_code(recipe, fs, Placeholders(app="/app"), exclude_roots=["/app/data"])
    assert "app/index.js" in files and "app/node_modules/ms/index.js" in files
    assert "app/node_modules/ms/package.json" in files
    assert not any(f.endswith(".md") for f in files)


def test_user_recipe_extends_a_builtin_and_adds_rules(python_fs, tmp_path):
    image, fs = python_fs
    path = tmp_path / "mine.toml"
    path.write_text(
        'name = "mine"\nextends = "python"\n'
        '[[code]]\npaths = ["/etc/sconify-demo"]\nextensions = [".json"]\n'
        '[data]\nauthenticated = ["/etc/sconify-demo"]\n'
    )
    recipe = load_recipe(str(path))
    assert recipe.name == "mine" and recipe.match == load_recipe("python").match
    assert recipe.authenticated == ("/etc/sconify-demo",) and recipe.ephemeral == ("/tmp",)
    files = select_code(recipe, fs, Placeholders(version="3.11", app="/app"), exclude_roots=[])
    assert "etc/sconify-demo/defaults.json" in files


@pytest.mark.parametrize(
    "text, message",
    [
        ('name = "x"\n[[code]]\npath = ["/a"]\n', "unknown key 'path'"),
        ('name = "x"\n[[code]]\npaths = ["relative"]\n', "must be absolute"),
        ('name = "x"\nextends = "ruby"\n', "names no built-in recipe"),
        ('[executable]\nmatch = ["x"]\n', "has no 'name'"),
        ('name = "x"\n[data]\nencrypted = "/data"\n', "must be a list of strings"),
        ("name = [", "is not valid TOML"),
    ],
)
def test_bad_recipes_say_what_to_fix(text, message):
    with pytest.raises(UsageError, match=message):
        parse_recipe(text, source="test.toml")


def test_unknown_recipe_name_or_missing_file():
    with pytest.raises(UsageError, match="neither a built-in recipe"):
        load_recipe("cobol")


def test_missing_data_dir_is_refused(python_fs):
    _image, fs = python_fs
    with pytest.raises(UsageError, match="--dir /nope is not a directory in the image"):
        select_data(fs, ["/nope"], "--dir")
    assert len(select_data(fs, ["/app/data"], "--dir")) >= 3


def test_a_relative_command_is_found_from_workdir(python_fs):
    image, fs = python_fs
    config = image.config
    config["config"].update({"Entrypoint": None, "Cmd": ["./bin/python3.11", "-V"], "WorkingDir": "/usr"})
    assert find_service(fs, config).executable == "/usr/bin/python3.11"
