"""The lease on a run's history (localdev/durable/store.py): one holder at a time, who it is, released on
release() and when the holding process dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from localdev.durable.store import LeaseHeld, LocalFolderHistoryStore
from tests.pipeline_helpers import ROOT


def test_a_held_lease_names_its_holder_and_is_free_once_released(tmp_path):
    store = LocalFolderHistoryStore(tmp_path)
    first = store.lease("export.run1")
    with pytest.raises(LeaseHeld) as held:
        store.lease("export.run1", wait=False)
    assert held.value.holder.startswith(f"process {os.getpid()} ")
    store.lease("export.run2", wait=False).release()  # another run is not held up
    first.release()
    store.lease("export.run1", wait=False).release()
    assert store.instance_ids() == []  # lease files are not instances


def test_a_killed_holder_leaves_the_lease_free(tmp_path):
    code = (
        "import sys; from localdev.durable.store import LocalFolderHistoryStore as S; "
        f"lease = S({str(tmp_path)!r}).lease('export.run1'); print('held', flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    store = LocalFolderHistoryStore(tmp_path)
    with pytest.raises(LeaseHeld) as held:
        store.lease("export.run1", wait=False)
    assert f"process {holder.pid}" in held.value.holder
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    store.lease("export.run1", wait=False).release()
