"""`python -m shared.planning.native --check`: are the C kernels active here? Exit 0 when the library is loaded,
matches the fastpath.c beside it and computes what the Python paths compute on a small sample; otherwise 1,
with the reason on one line. The deploy workflow runs it on the package before publishing."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from shared.planning import native
from shared.planning.profiles import ProfileMapper, email_key
from shared.reading.formats import CsvFormat

_COLUMNS = ["Id", "Email", "FirstName", "Phone"]
_MAPPING = {"FirstName": "first_name", "Phone": "phone_number"}
_ROWS = [["1", " Ann@Example.COM", "Ann", "+44 20 7946 0958"], ["2", "bob@example.com", 'Bo "B"', ""]]


def self_test() -> str | None:
    """None when the kernels plan and build profiles exactly as the row path does; else what differed."""
    mapper = ProfileMapper(_COLUMNS, "Email", _MAPPING)
    piece = b"".join(b",".join(b'"' + v.replace('"', '""').encode() + b'"' for v in row) + b"\r\n" for row in _ROWS)
    emails = [row[1].strip().lower() for row in _ROWS]
    planned = native.NativePlanReader(CsvFormat(), mapper).read(piece)
    if planned is None or planned.status.tolist() != [native.ROW_OK] * len(_ROWS):
        return "the plan kernel refused a plain sample"
    if planned.emails.to_pylist() != emails or planned.ekeys.tolist() != list(map(email_key, emails)):
        return "the plan kernel's emails or keys differ from the row path's"
    built = native.NativeProfiles(CsvFormat(), mapper).build(piece, len(_ROWS), np.arange(len(_ROWS)))
    expected = [mapper.profile_json(row, email)[0] for row, email in zip(_ROWS, emails, strict=True)]
    if built is None or built[0] != expected:
        return "the profile kernel's JSON differs from the row path's"
    return None


def check() -> tuple[bool, str]:
    if not native.available:
        return False, native.status
    try:
        problem = self_test()
    except Exception as exc:  # a kernel's Python side out of step with its C side: say so on one line
        problem = f"its self-test failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    if problem:
        return False, f"{native.LIBRARY.name} is loaded but {problem}"
    return True, f"{native.status}; self-test passed: the fast path runs the C kernels"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.planning.native", description=__doc__)
    parser.add_argument("--check", action="store_true", help="check the kernels are active (exit 0) or say why not")
    args = parser.parse_args(argv)
    if not args.check:
        parser.print_usage(sys.stderr)
        return 2
    ok, message = check()
    print(message, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
