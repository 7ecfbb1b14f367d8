"""``benchmarks.bench_overload --pin``: the server and hey each get their own cores, and the mask is restored."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from benchmarks.bench_overload import on_cores, split_cores

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")


def test_split_cores_gives_each_side_its_own_cores() -> None:
    server, client = split_cores()
    assert server and client
    assert not server & client
    assert server | client == os.sched_getaffinity(0)


def test_a_process_started_on_cores_keeps_them_and_the_mask_is_restored() -> None:
    before = os.sched_getaffinity(0)
    server, _ = split_cores()
    with on_cores(server):
        child = subprocess.Popen(
            [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
            stdout=subprocess.PIPE,
            text=True,
        )
        out, _ = child.communicate(timeout=30)
    assert out.strip() == str(sorted(server))
    assert os.sched_getaffinity(0) == before


def test_the_mask_is_restored_when_the_block_fails() -> None:
    before = os.sched_getaffinity(0)
    server, _ = split_cores()
    with pytest.raises(RuntimeError), on_cores(server):
        raise RuntimeError("boom")
    assert os.sched_getaffinity(0) == before
