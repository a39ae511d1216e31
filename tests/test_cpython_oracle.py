"""CPython's own regression tests as the oracle of the runtime's file semantics (issue 23), in CI:
sconify.demo.apps.CPYTHON_ORACLE_CI_TESTS (modules that work files, directories, locks and
temporary files) run in the original and the converted ``python-tests`` image, in both columns of
bench/cpython_oracle.py (the default ``/tmp``; TMPDIR and the working directory in the encrypted
volume). Every module that passes in the original passes converted. The full list (about 25 min)
is ``python bench/cpython_oracle.py``; both use tests/regrtest.py.
"""

from __future__ import annotations

import pytest

from regrtest import WHERE, Run, keys_copy, oracle_images, parse_results, passed, regressions, run_tests
from sconify.demo.apps import CPYTHON_ORACLE_CI_TESTS, CPYTHON_ORACLE_TESTS

MODULES = list(CPYTHON_ORACLE_CI_TESTS)
TIMEOUT = 900  # seconds per run: a hung module fails the test instead of the CI job


@pytest.fixture(scope="module")
def images(docker_client, tmp_path_factory):
    """One build and one conversion for both columns: the image's command runs MODULES."""
    with oracle_images(MODULES, tmp_path_factory.mktemp("cpython-oracle")) as made:
        yield made


@pytest.fixture(scope="module")
def original(images):
    """The original image's run, once, in the /tmp column: in the original both columns are plain
    directories, so one run stands for both (bench/cpython_oracle.py runs it in each); every
    module must pass there (the oracle)."""
    run = run_tests(images.original, "tmp", None, TIMEOUT)
    assert [module for module in MODULES if not passed(run, module)] == [], run.tail
    return run


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.parametrize("where", list(WHERE))
def test_every_module_that_passes_in_the_original_passes_converted(where, images, original, tmp_path):
    converted = run_tests(images.converted, where, keys_copy(images.out, tmp_path, "keys"), TIMEOUT)
    assert regressions(MODULES, original, converted) == [], (converted.results, converted.tail)


def test_the_ci_modules_are_oracle_modules():
    assert set(CPYTHON_ORACLE_CI_TESTS) <= set(CPYTHON_ORACLE_TESTS)


# What `python3 -m test -j2` prints (3.11), and the comparison on it.
ORIGINAL = """\
0:00:00 load avg: 0.41 Run tests in parallel using 2 child processes
0:00:01 load avg: 0.41 [1/4] test_glob passed
0:00:02 load avg: 0.41 [2/4] test_stat passed
0:00:35 load avg: 1.02 [3/4] test_tempfile passed (32.1 sec) -- running: test_fcntl (30.2 sec)
0:00:36 load avg: 1.02 [4/4] test_fcntl skipped (resource denied)
"""
CONVERTED = """\
0:00:00 load avg: 0.41 Run tests in parallel using 2 child processes
0:00:01 load avg: 0.41 [1/4] test_glob passed
0:00:03 load avg: 0.41 [2/4/1] test_stat failed (2 errors)
0:00:36 load avg: 1.02 [3/4/2] test_fcntl crashed (Exit code -11)
"""


def test_progress_lines_give_each_modules_result():
    assert parse_results(ORIGINAL) == {"test_glob": "passed", "test_stat": "passed", "test_tempfile": "passed (32.1 sec)",
                                       "test_fcntl": "skipped (resource denied)"}
    assert parse_results(CONVERTED) == {"test_glob": "passed", "test_stat": "failed (2 errors)",
                                        "test_fcntl": "crashed (Exit code -11)"}


def test_a_module_that_fails_or_does_not_run_converted_is_a_regression():
    modules = ["test_glob", "test_stat", "test_tempfile", "test_fcntl"]
    original, converted = (Run(parse_results(out), 1.0, 0, "") for out in (ORIGINAL, CONVERTED))
    # test_stat fails, test_tempfile never reported; test_fcntl did not pass in the original either
    assert regressions(modules, original, converted) == ["test_stat", "test_tempfile"]
    assert regressions(modules, original, original) == []
