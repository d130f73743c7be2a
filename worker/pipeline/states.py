"""The states of a run and of a file version, their allowed transitions, and the advisory-lock spaces.

Kept apart from worker/pipeline/lifecycle.py (which re-exports everything here) only so that
worker/pipeline/ledger.py can use them without an import cycle; lifecycle.py is the module to read.

Values are the strings stored in etl.load_runs.status and etl.load_run_files.status (their CHECK
constraints are contracts/schema.py's RUN_STATUSES and FILE_STATUSES, generated from these enums).
"""

from __future__ import annotations

from enum import Enum, IntEnum


class RunStatus(str, Enum):
    """etl.load_runs.status. A run is opened `running` and closed once, to one of the three others."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self is not RunStatus.RUNNING


class FileStatus(str, Enum):
    r"""etl.load_run_files.status of one S3 object version.

        pending -> landed -> staged -> merged
               \-> duplicate    same bytes already loaded under another version of the batch
        (registered) superseded an older version of a key whose newer version is taken
        any work -> failed      error and error_detail say why; retryable or not
        any     -> pending      only by an audited reprocess request (etl.reprocess_requests)

    `skipped` is allowed by the table but not written by this version of the service.
    """

    PENDING = "pending"
    LANDED = "landed"
    STAGED = "staged"
    MERGED = "merged"
    FAILED = "failed"
    SKIPPED = "skipped"
    DUPLICATE = "duplicate"
    SUPERSEDED = "superseded"

    @property
    def done(self) -> bool:
        """Nothing more will happen to this version (no step of any run picks it up again)."""
        return self in DONE_FILE_STATES

    @property
    def final_for_run(self) -> bool:
        """The file's own work in its run has ended (staged files still wait for the merge)."""
        return self not in (FileStatus.PENDING, FileStatus.LANDED)


DONE_FILE_STATES = frozenset({FileStatus.MERGED, FileStatus.DUPLICATE, FileStatus.SKIPPED, FileStatus.SUPERSEDED})

# new state -> the states it may be reached from (checked in SQL by worker/pipeline/ledger.py: an
# UPDATE whose WHERE names the allowed previous states, so a transition that is not allowed changes
# nothing and raises InvalidTransition).
FILE_TRANSITIONS: dict[FileStatus, frozenset[FileStatus]] = {
    # staged, merged: only by restage (ledger.mark_restaging), which replays raw after a contract fix.
    FileStatus.LANDED: frozenset({FileStatus.PENDING, FileStatus.FAILED, FileStatus.STAGED, FileStatus.MERGED}),
    FileStatus.DUPLICATE: frozenset({FileStatus.PENDING, FileStatus.FAILED}),
    FileStatus.STAGED: frozenset({FileStatus.LANDED}),
    FileStatus.MERGED: frozenset({FileStatus.STAGED}),
    FileStatus.FAILED: frozenset({FileStatus.PENDING, FileStatus.LANDED, FileStatus.STAGED, FileStatus.FAILED}),
    FileStatus.PENDING: frozenset(FileStatus) - {FileStatus.PENDING},  # reprocess request only
}

RUN_TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.RUNNING: frozenset({RunStatus.SUCCEEDED, RunStatus.PARTIAL, RunStatus.FAILED}),
    RunStatus.SUCCEEDED: frozenset(),
    RunStatus.PARTIAL: frozenset(),
    RunStatus.FAILED: frozenset(),
}


class InvalidTransition(RuntimeError):
    """A state change that the lifecycle does not allow (a bug, or a concurrent change)."""


def check_run_transition(old: RunStatus | str, new: RunStatus | str) -> None:
    old, new = RunStatus(old), RunStatus(new)
    if new not in RUN_TRANSITIONS[old]:
        raise InvalidTransition(f"a run cannot go from {old.value} to {new.value}")


def check_file_transition(old: FileStatus | str, new: FileStatus | str) -> None:
    old, new = FileStatus(old), FileStatus(new)
    if old not in FILE_TRANSITIONS.get(new, frozenset()):
        raise InvalidTransition(f"a file cannot go from {old.value} to {new.value}")


class LockSpace(IntEnum):
    """First key of the two-key advisory locks; the second is the file id, the run id, or 0 for a
    run-wide step. (worker/pipeline/nhi_keys.py uses its own lock, KEY_LOCK = (1010, 1).)"""

    LAND = 1  # (LAND, file_id): landing one file version
    STAGE = 2  # (STAGE, file_id): staging it
    MERGE = 3  # (MERGE, 0): one merge at a time
    PLAN = 4  # (PLAN, run_id): planning one run
