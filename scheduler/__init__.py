"""The beat schedule (see beat.py)."""

from scheduler.beat import BEAT_SCHEDULE, NIGHTLY_LOCAL_TIME, NIGHTLY_TASK

__all__ = ["BEAT_SCHEDULE", "NIGHTLY_LOCAL_TIME", "NIGHTLY_TASK"]
