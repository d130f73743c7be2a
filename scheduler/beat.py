"""The beat schedule: what `celery -A worker.app beat` enqueues, and when.

The app's timezone is Pacific/Auckland (worker/app.py), so crontab hours below are New Zealand
wall-clock times; Celery follows the daylight-saving changes itself.
"""

from __future__ import annotations

from datetime import time

from celery.schedules import crontab

# The nightly run, at 03:30 New Zealand time.
#
# Why 03:30: deliveries arrive on Sunday around midday (more often later), so any night-time hour picks
# up the newest batch well before the analysts' dashboards are read in the morning, and 03:30 keeps the
# heavy merges away from evening reporting queries and from the practices' own working hours.
#
# Why not 02:xx (DST): on the last Sunday of September clocks spring forward from 02:00 NZST to 03:00
# NZDT, so 02:00-02:59 does not exist that day and a 02:30 run would be skipped (or run at a surprising
# time); on the first Sunday of April clocks fall back from 03:00 NZDT to 02:00 NZST, so 02:00-02:59
# happens twice and a 02:30 run could be enqueued twice. 03:30 is after both changes and exists exactly
# once every day of the year (tests/unit/scheduler/test_beat.py checks the change days).
#
# Even if a run were enqueued twice, nothing is loaded twice (the ledger's locks and unique
# constraints decide, not the schedule); the choice avoids a pointless second run and a missing night.
NIGHTLY_LOCAL_TIME = time(3, 30)
NIGHTLY_TASK = "indici.nightly_run"  # by name: the scheduler does not import the tasks module
# Two beats (a second scheduler started by mistake, or during a deploy) send the message twice: the run
# is keyed 'nightly:<NZ date>' in etl.load_runs (unique), so the second message joins the first run.

# The reconciler, every 5 minutes, all day.
#
# Why: a run whose driver is gone (a worker SIGKILLed before its ack, a chord message lost with a
# broker restart, an inline process killed) would otherwise stay `running` until Redis redelivers
# (hours) or for ever. The reconciler acts only on runs whose lease has expired and none of whose
# files is leased (worker/pipeline/lifecycle.reconcile), so it never races a live worker; every 5
# minutes bounds the time to recovery at lease + 5 min without measurable load (one indexed query).
# DST-safe: an every-5-minutes crontab (minute='*/5', every hour) has no wall-clock hour that a
# daylight-saving change could skip or repeat in a way that matters: a skipped hour skips 12
# harmless ticks, a repeated one runs 12 more, and each run is idempotent.
RECONCILE_TASK = "indici.reconcile"
RECONCILE_EVERY_MINUTES = 5

BEAT_SCHEDULE = {
    "nightly-run": {
        "task": NIGHTLY_TASK,
        "schedule": crontab(hour=NIGHTLY_LOCAL_TIME.hour, minute=NIGHTLY_LOCAL_TIME.minute),
        # A message that waited most of a day (workers down) is dropped rather than run next to the
        # following night's run; that run finds the same files anyway.
        "options": {"expires": 20 * 60 * 60},
    },
    "reconcile": {
        "task": RECONCILE_TASK,
        "schedule": crontab(minute=f"*/{RECONCILE_EVERY_MINUTES}"),
        # A tick that waited longer than the interval is dropped: the next one does the same work.
        "options": {"expires": RECONCILE_EVERY_MINUTES * 60},
    },
}
