"""New Zealand local time -> UTC, with one rule for the DST gap and overlap.

Indici writes NZ wall-clock times without an offset. A time in the hour skipped by spring-forward does
not exist, and one in the hour repeated by fall-back is ambiguous. Both are read with NZ standard time
(+12:00): the same rule Postgres' `timestamp AT TIME ZONE 'Pacific/Auckland'` applies in staging, so a
file name's DateExtracted and a row's timestamps never disagree.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

NZ = ZoneInfo("Pacific/Auckland")


def nz_local_to_utc(local: datetime) -> datetime:
    """A naive NZ wall-clock time as an aware UTC datetime (gap and overlap: standard time)."""
    if local.tzinfo is not None:
        raise ValueError("expected a naive local time")
    candidates = [local.replace(tzinfo=NZ, fold=fold) for fold in (0, 1)]
    # Of the two readings, the one with the smaller offset is standard time; when the time is ordinary
    # both readings are the same instant.
    chosen = min(candidates, key=lambda c: c.utcoffset() or timedelta(0))
    return chosen.astimezone(timezone.utc)


def nz_today() -> date:
    """Today's date in New Zealand (the date a nightly run is for)."""
    return datetime.now(NZ).date()
