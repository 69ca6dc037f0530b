"""The deployment package (`make package` -> dist/app) installed the way Azure's remote build installs it, and
checked: `python -m localdev.package check dist/app`.

A copy of the package gets its requirements from `pip install -r requirements.txt --target
.python_packages/lib/site-packages` run in a clean virtual environment with the app folder as the working
directory (the remote build's command; the Functions host then puts that folder on the worker's path). A
probe run in that environment imports `function_app`, indexes its functions as the Python worker does
(`app.get_functions()` and each function's JSON) and runs `python -m shared.planning.native --check`.
The deploy workflow runs this before publishing, and tests/test_package.py runs it on every test run.
Standard library only: the workflow runs it before anything else is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import venv
from dataclasses import dataclass
from pathlib import Path

SITE_PACKAGES = ".python_packages/lib/site-packages"

# Runs inside the installed copy: prints one JSON document.
PROBE = r"""
import inspect, json, logging, subprocess, sys
startup = []
class Lines(logging.Handler):
    def emit(self, record):
        startup.append(record.getMessage())
logging.getLogger("function_app").addHandler(Lines())
logging.getLogger("function_app").setLevel(logging.INFO)
import function_app, numpy
functions = [
    {"name": f.get_function_name(), "function_json": json.loads(f.get_function_json()),
     "is_async": inspect.iscoroutinefunction(f.get_user_function())}
    for f in function_app.app.get_functions()
]
check = subprocess.run([sys.executable, "-m", "shared.planning.native", "--check"], capture_output=True, text=True)
print(json.dumps({
    "function_app": function_app.__file__, "numpy": numpy.__file__, "functions": functions, "startup": startup,
    "kernels": {"ok": check.returncode == 0, "message": (check.stdout + check.stderr).strip()},
}))
"""


@dataclass
class Probe:
    app: Path  # the installed copy
    function_app: str  # where function_app was imported from
    numpy: str  # where a requirement was imported from
    functions: list[dict]  # name, function_json, is_async
    startup: list[str]  # what the app logged when loaded (its version and fast path)
    kernels_ok: bool
    kernels_message: str

    def problems(self) -> list[str]:
        out = []
        if not Path(self.function_app).resolve().is_relative_to(self.app.resolve()):
            out.append(f"function_app was imported from {self.function_app}, not from the package")
        if not Path(self.numpy).resolve().is_relative_to((self.app / SITE_PACKAGES).resolve()):
            out.append(f"the requirements were imported from {self.numpy}, not from {SITE_PACKAGES}")
        if not self.functions:
            out.append("the worker would index no function")
        if not self.startup:
            out.append("the app logged no startup line (version and fast path) when loaded")
        if not self.kernels_ok:
            out.append(f"the C kernels are not active: {self.kernels_message}")
        return out


def _run(cmd: list[str], cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"{' '.join(cmd[:4])}... failed (exit {done.returncode}): {tail[0]}")
    return done


def install(package: Path, work: Path) -> tuple[Path, Path]:
    """(the installed copy, the clean environment's python): the package copied to work/app, its requirements
    installed there by the clean environment's pip as the remote build does (pip's cache is used)."""
    app = work / "app"
    shutil.copytree(package, app)
    venv.EnvBuilder(with_pip=True, clear=True).create(work / "venv")
    python = work / "venv" / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input"]
    _run([*pip, "-r", "requirements.txt", "--target", SITE_PACKAGES], cwd=app)
    return app, python


def probe(app: Path, python: Path) -> Probe:
    """Import, index and check the kernels in the installed copy, with the Functions host's path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(PYTHONPATH=str(app / SITE_PACKAGES), PYTHONNOUSERSITE="1", PYTHONDONTWRITEBYTECODE="1")
    done = _run([str(python), "-c", PROBE], cwd=app, env=env)
    found = json.loads(done.stdout.strip().splitlines()[-1])
    return Probe(
        app,
        found["function_app"],
        found["numpy"],
        found["functions"],
        found["startup"],
        found["kernels"]["ok"],
        found["kernels"]["message"],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localdev.package", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="install a copy of the package as the remote build does, and check it")
    check.add_argument("package", type=Path, help="the package folder (make package: dist/app)")
    args = parser.parse_args(argv)
    if not (args.package / "function_app.py").is_file():
        print(f"error: {args.package} holds no function_app.py (run `make package`)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="package-check-") as work:
        try:
            found = probe(*install(args.package, Path(work)))
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        for problem in found.problems():
            print(f"error: {problem}", file=sys.stderr)
        if found.problems():
            return 1
        names = ", ".join(f["name"] for f in found.functions)
        print(f"package {args.package}: function_app imports; {len(found.functions)} functions indexed ({names})")
        print(*found.startup, sep="\n")
        print(found.kernels_message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
