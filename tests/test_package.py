"""The deployment package: `make package` builds dist/app as the deploy workflow does, and a copy installed the way
Azure's remote build installs it (pip --target .python_packages/lib/site-packages in a clean environment, the
app folder as working directory) imports function_app, indexes every function the repository's app has, and
runs the C kernels. pip's cache makes the install quick after the first run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pathspec
import pytest

import function_app
from localdev.host import describe_functions
from localdev.package import SITE_PACKAGES, install, probe

ROOT = Path(__file__).resolve().parent.parent


def _make_package(dist: Path) -> Path:
    make = ["make", "--no-print-directory", "package", f"DIST={dist}"]
    subprocess.run(make, cwd=ROOT, check=True, capture_output=True)
    return dist / "app"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the package, its installed copy, the clean environment's python)."""
    work = tmp_path_factory.mktemp("package")
    package = _make_package(work / "dist")
    return package, *install(package, work / "installed")


def test_the_package_holds_the_app_and_nothing_else(installed):
    package, _, _ = installed
    assert sorted(p.name for p in package.iterdir()) == [
        "VERSION",
        "function_app.py",
        "functions",
        "host.json",
        "requirements.txt",
        "shared",
    ]
    files = [p.relative_to(package).as_posix() for p in package.rglob("*") if p.is_file()]
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]
    assert {"shared/planning/native/fastpath.c", "shared/planning/native/libfastpath.so"} <= set(files)
    assert re.fullmatch(r"\d+\.\d+\.\d+\+\S+", (package / "VERSION").read_text().strip())


def test_the_installed_package_imports_indexes_every_function_and_runs_the_kernels(installed):
    _, app, python = installed
    found = probe(app, python)
    assert found.problems() == []
    indexed = {f["name"]: f["function_json"]["bindings"] for f in found.functions}
    assert indexed == {f.name: list(f.bindings) for f in describe_functions(function_app.app)}
    assert found.kernels_ok
    assert "self-test passed" in found.kernels_message
    version = (app / "VERSION").read_text().strip()
    assert found.startup == [f"ci-klaviyo-sync {version}: fast path kernels ({found.kernels_message.split(';')[0]})"]


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (lambda native: (native / "libfastpath.so").unlink(), "libfastpath.so is not built"),
        (lambda native: (native / "fastpath.c").write_text("/* another version */"), "built from another fastpath.c"),
        (lambda native: (native / "libfastpath.so").write_bytes(b"not a library"), "libfastpath.so cannot be loaded"),
    ],
    ids=["missing", "stale", "unloadable"],
)
def test_the_kernels_check_fails_with_the_reason(installed, tmp_path, spoil, reason):
    _, app, python = installed
    shutil.copytree(app / "shared", tmp_path / "shared")
    spoil(tmp_path / "shared" / "planning" / "native")
    env = {**os.environ, "PYTHONPATH": str(app / SITE_PACKAGES), "PYTHONDONTWRITEBYTECODE": "1"}
    check = [str(python), "-m", "shared.planning.native", "--check"]
    done = subprocess.run(check, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 1
    assert reason in done.stderr.strip().splitlines()[-1]  # (a refused build's warning may come first)


def test_the_kernels_need_nothing_newer_than_an_old_c_library(installed):
    """Built on the newest Ubuntu runner, loaded on the Functions image (Debian 12, glibc 2.36): the library
    may only use C library symbols that old glibc versions already had."""
    package, _, _ = installed
    symbols = subprocess.run(
        ["objdump", "-T", str(package / "shared/planning/native/libfastpath.so")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    versions = {tuple(map(int, v.split("."))) for v in re.findall(r"GLIBC_(\d+(?:\.\d+)+)", symbols)}
    assert versions
    assert max(versions) <= (2, 17)


def _published_from_the_root() -> set[str]:
    """The files `func azure functionapp publish` uploads from the repository root: every file .funcignore
    does not match (gitignore rules: a matched folder is left out whole). Symlinks are not followed."""
    ignore = pathspec.GitIgnoreSpec.from_lines((ROOT / ".funcignore").read_text().splitlines())
    uploaded = set()
    for folder, dirs, files in os.walk(ROOT):
        here = Path(folder).relative_to(ROOT)
        dirs[:] = [d for d in dirs if not ignore.match_file(f"{(here / d).as_posix()}/")]
        uploaded |= {(here / f).as_posix() for f in files if not ignore.match_file((here / f).as_posix())}
    return uploaded


def test_funcignore_leaves_the_app_alone_from_the_repository_root():
    app = {"function_app.py", "host.json", "requirements.txt"}
    for folder in ("functions", "shared"):
        app |= {p.relative_to(ROOT).as_posix() for p in (ROOT / folder).rglob("*") if p.is_file()}
    app = {f for f in app if "__pycache__" not in f and not f.endswith(".pyc")}
    assert _published_from_the_root() == app
