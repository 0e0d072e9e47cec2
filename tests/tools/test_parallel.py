"""The process team behind compute-image-mean: every task done once, results and shared memory
back in the caller, a failure anywhere raised in the caller with no process left behind."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from dnntool.errors import FormatError
from dnntool.tools.parallel import Team

fork_only = pytest.mark.skipif(not hasattr(os, "fork"), reason="the team forks")


def _no_children_left() -> bool:
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def _work(team: Team, buf):
    done = []
    while (task := team.claim()) is not None:
        done.append(task)
        team.add_done(1)
        time.sleep(0.001)  # long enough that every member gets some
    if buf is not None:
        np.frombuffer(buf, np.int64)[:] = os.getpid()
    return os.getpid(), done


@fork_only
def test_team_does_every_task_once_and_returns_shared_memory():
    team = Team(3, list(range(60)), slot_bytes=16)
    out = team.run(_work)
    assert len(out) == 3 and out[0][1] is None
    assert out[0][0][0] == os.getpid()
    pids = {pid for (pid, _), _ in out}
    assert len(pids) == 3
    assert sorted(t for (_, done), _ in out for t in done) == list(range(60))
    for (pid, _), buf in out[1:]:
        assert np.frombuffer(buf, np.int64).tolist() == [pid, pid]
    assert team.add_done(0) == 60
    team.join()
    assert _no_children_left()


def test_team_of_one_runs_here():
    team = Team(1, ["a", "b"], slot_bytes=8)
    out = team.run(_work)
    assert out == [((os.getpid(), ["a", "b"]), None)]
    assert Team(4, [1]).jobs == 1  # never more members than tasks


@fork_only
def test_team_error_in_a_child_is_raised_here():
    parent = os.getpid()

    def work(team, buf):
        while (task := team.claim()) is not None:
            if os.getpid() != parent:
                raise FormatError(f"record '{task}' is broken")
            time.sleep(0.01)
        return None

    with pytest.raises(FormatError, match=r"record '\d+' is broken"):
        Team(2, list(range(20))).run(work)
    assert _no_children_left()


@fork_only
def test_team_child_that_dies_and_error_here_kill_the_rest():
    parent = os.getpid()

    def dies(team, buf):
        if os.getpid() != parent:
            os._exit(3)
        return None

    with pytest.raises(RuntimeError, match="died without a result"):
        Team(2, [1, 2]).run(dies)
    assert _no_children_left()

    def fails_here(team, buf):
        if os.getpid() == parent:
            raise KeyboardInterrupt
        time.sleep(60)  # killed, not waited for
        return None

    t = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        Team(3, [1, 2, 3]).run(fails_here)
    assert time.perf_counter() - t < 10 and _no_children_left()
