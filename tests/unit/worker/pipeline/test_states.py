"""The run and file states: stored strings, allowed transitions, the lock spaces."""

from __future__ import annotations

import pytest

from contracts.schema import FILE_STATUSES, RUN_STATUSES
from worker.pipeline.lifecycle import (
    FILE_TRANSITIONS,
    FileStatus,
    InvalidTransition,
    LockSpace,
    RunStatus,
    check_file_transition,
    check_run_transition,
)


def test_the_enums_are_the_strings_the_tables_allow():
    assert tuple(s.value for s in FileStatus) == FILE_STATUSES
    assert tuple(s.value for s in RunStatus) == RUN_STATUSES
    assert FileStatus("merged") == "merged"  # str enums compare with the stored strings


@pytest.mark.parametrize(("old", "new"), [("pending", "landed"), ("landed", "staged"), ("staged", "merged"),
                                          ("pending", "duplicate"), ("failed", "landed"), ("landed", "failed"),
                                          ("merged", "pending")])
def test_the_lifecycle_transitions_are_allowed(old, new):
    check_file_transition(old, new)


@pytest.mark.parametrize(("old", "new"), [("pending", "staged"), ("pending", "merged"), ("merged", "staged"),
                                          ("duplicate", "landed"), ("superseded", "landed"), ("merged", "failed")])
def test_other_transitions_are_refused(old, new):
    with pytest.raises(InvalidTransition, match=f"from {old} to {new}"):
        check_file_transition(old, new)


def test_a_run_closes_once():
    for final in (RunStatus.SUCCEEDED, RunStatus.PARTIAL, RunStatus.FAILED):
        check_run_transition(RunStatus.RUNNING, final)
        assert final.final
        with pytest.raises(InvalidTransition):
            check_run_transition(final, RunStatus.RUNNING)
    assert not RunStatus.RUNNING.final


def test_every_state_but_pending_is_reached_from_somewhere_and_lock_spaces_are_distinct():
    reachable = {new for new, olds in FILE_TRANSITIONS.items() if olds}
    assert reachable >= set(FileStatus) - {FileStatus.SKIPPED, FileStatus.SUPERSEDED}  # those two: registered
    assert len({int(s) for s in LockSpace}) == len(LockSpace)
