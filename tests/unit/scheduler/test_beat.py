"""The nightly run's local time exists exactly once every day in Pacific/Auckland, DST days included."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from scheduler import BEAT_SCHEDULE, NIGHTLY_LOCAL_TIME, NIGHTLY_TASK

NZ = ZoneInfo("Pacific/Auckland")
YEARS = range(date.today().year, date.today().year + 10)


def occurrences(day: date, wall: time) -> int:
    """How many UTC instants show `wall` on the clock in New Zealand on `day` (0, 1 or 2)."""
    instants = set()
    for fold in (0, 1):
        local = datetime.combine(day, wall, tzinfo=NZ).replace(fold=fold)
        utc = local.astimezone(timezone.utc)
        back = utc.astimezone(NZ)
        if back.replace(tzinfo=None) == local.replace(tzinfo=None):  # a gap time does not round-trip
            instants.add(utc)
    return len(instants)


def dst_change_days(year: int) -> list[date]:
    days = []
    day = date(year, 1, 1)
    while day.year == year:
        start = datetime.combine(day, time(0), tzinfo=NZ).utcoffset()
        end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=NZ).utcoffset()
        if start != end:
            days.append(day)
        day += timedelta(days=1)
    return days


@pytest.mark.parametrize("year", YEARS)
def test_two_dst_changes_a_year(year):
    changes = dst_change_days(year)
    assert [d.month for d in changes] == [4, 9]  # first Sunday of April, last Sunday of September
    assert all(d.weekday() == 6 for d in changes)


@pytest.mark.parametrize("year", YEARS)
def test_nightly_time_exists_exactly_once_on_dst_change_days(year):
    for day in dst_change_days(year):
        assert occurrences(day, NIGHTLY_LOCAL_TIME) == 1, day


def test_the_check_would_catch_a_time_inside_the_dst_hour():
    april, september = dst_change_days(YEARS[0])
    assert occurrences(april, time(2, 30)) == 2  # fall back: 02:00-02:59 happens twice
    assert occurrences(september, time(2, 30)) == 0  # spring forward: 02:00-02:59 never happens


def test_schedule_runs_the_nightly_task_at_the_local_time():
    entry = BEAT_SCHEDULE["nightly-run"]
    assert entry["task"] == NIGHTLY_TASK
    assert entry["schedule"].hour == {NIGHTLY_LOCAL_TIME.hour}
    assert entry["schedule"].minute == {NIGHTLY_LOCAL_TIME.minute}


def test_the_app_reads_the_schedule_in_new_zealand_time():
    from celery.schedules import crontab

    from worker.app import app
    import worker.tasks  # noqa: F401  (registers the tasks)

    assert NIGHTLY_TASK in app.tasks
    assert str(app.conf.timezone) == "Pacific/Auckland" and app.conf.enable_utc
    assert app.conf.beat_schedule is BEAT_SCHEDULE or app.conf.beat_schedule == BEAT_SCHEDULE
    for day in dst_change_days(YEARS[0]):
        yesterday = datetime.combine(day - timedelta(days=1), NIGHTLY_LOCAL_TIME, tzinfo=NZ)
        for minutes, due in ((-1, False), (0, True)):
            now = datetime.combine(day, NIGHTLY_LOCAL_TIME, tzinfo=NZ) + timedelta(minutes=minutes)
            schedule = crontab(hour=NIGHTLY_LOCAL_TIME.hour, minute=NIGHTLY_LOCAL_TIME.minute,
                               nowfun=lambda now=now: now, app=app)
            assert schedule.is_due(yesterday).is_due is due, (day, minutes)


def test_the_reconciler_runs_every_few_minutes_all_day():
    from scheduler.beat import RECONCILE_EVERY_MINUTES, RECONCILE_TASK

    entry = BEAT_SCHEDULE["reconcile"]
    assert entry["task"] == RECONCILE_TASK == "indici.reconcile"
    schedule = entry["schedule"]
    assert schedule.minute == set(range(0, 60, RECONCILE_EVERY_MINUTES)) and schedule.hour == set(range(24))
    assert entry["options"]["expires"] <= RECONCILE_EVERY_MINUTES * 60  # a late tick is dropped, not doubled
