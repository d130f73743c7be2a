"""Pacific/Auckland wall-clock seconds -> UTC seconds, vectorised, with Postgres' rule for gaps and overlaps.

Postgres (`timestamp AT TIME ZONE zone`, src/backend/utils/adt/datetime.c DetermineTimeZoneOffset) looks
for the first zone transition after `local - 1 day` (local read as if it were UTC), and reads the local time
with the offset before and the offset after it. When both readings fall on the same side of the transition,
that side's offset is used; otherwise (a time in a spring-forward gap or a fall-back overlap) the reading
giving the *later* instant wins: in a gap the offset before the transition, in an overlap the one after.
For New Zealand since 1946 both are NZ standard time (+12:00); before 1946 the zone's history applies.

The transitions come from the same tz database Postgres uses on this machine (the system's
/usr/share/zoneinfo, read through Python's zoneinfo), found by scanning the zone once per process over
the plausible date range (contracts.types.PLAUSIBLE_DATES) with a margin.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo

import numpy as np

from contracts.types import PLAUSIBLE_DATES, SOURCE_TIME_ZONE

DAY = 86_400
_EPOCH = datetime(1970, 1, 1)


def _offset(zone: ZoneInfo, utc_seconds: int) -> int:
    offset = zone.fromutc((_EPOCH + timedelta(seconds=utc_seconds)).replace(tzinfo=zone)).utcoffset()
    assert offset is not None
    return int(offset.total_seconds())


@lru_cache(maxsize=None)
def transitions(zone_name: str = SOURCE_TIME_ZONE) -> tuple[np.ndarray, np.ndarray]:
    """(boundaries, offsets): UTC seconds of each offset change in the scanned range, and the offset
    before the first boundary followed by the offset after each boundary (len(boundaries) + 1)."""
    zone = ZoneInfo(zone_name)
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    start = int((datetime.fromisoformat(PLAUSIBLE_DATES[0]).replace(tzinfo=timezone.utc) - epoch).total_seconds())
    end = int((datetime.fromisoformat(PLAUSIBLE_DATES[1]).replace(tzinfo=timezone.utc) - epoch).total_seconds())
    start -= 400 * DAY
    end += 400 * DAY
    boundaries: list[int] = []
    offsets = [_offset(zone, start)]
    t = start
    previous = offsets[0]
    # Pacific/Auckland never changed its offset twice within 28 days (its changes since 1868 are months
    # apart); each change found is then located to the second.
    step = 28 * DAY
    while t < end:
        nxt = t + step
        current = _offset(zone, nxt)
        if current != previous:
            lo, hi = t, nxt  # offset(lo) == previous, offset(hi) == current
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if _offset(zone, mid) == previous:
                    lo = mid
                else:
                    hi = mid
            boundaries.append(hi)
            offsets.append(current)
            previous = current
        t = nxt
    return np.asarray(boundaries, dtype=np.int64), np.asarray(offsets, dtype=np.int64)


def local_to_utc_seconds(local: np.ndarray, zone_name: str = SOURCE_TIME_ZONE) -> np.ndarray:
    """UTC seconds (int64) for local wall-clock seconds (int64, local time read as if UTC)."""
    boundaries, offsets = transitions(zone_name)
    if len(boundaries) == 0:
        return local - offsets[0]
    i = np.searchsorted(boundaries, local - DAY, side="right")  # first boundary > local - 1 day
    found = i < len(boundaries)
    ic = np.minimum(i, len(boundaries) - 1)
    before = offsets[ic]
    after = offsets[ic + 1]
    boundary = boundaries[ic]
    before_time = local - before
    after_time = local - after
    both_before = (before_time < boundary) & (after_time < boundary)
    both_after = (before_time >= boundary) & (after_time >= boundary)
    use_before = both_before | (~both_after & (before_time > after_time))
    chosen = np.where(use_before, before, after)
    # No boundary after local - 1 day: the offset in force after the last one.
    chosen = np.where(found, chosen, offsets[-1])
    return local - chosen
