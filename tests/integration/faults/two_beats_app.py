"""The Celery app with a test schedule: the nightly task every 2 seconds (two of these beats send it many
times a minute, as two beats at 03:30 would send it twice)."""

from worker.app import app

app.conf.beat_schedule = {"nightly-run": {"task": "indici.nightly_run", "schedule": 2.0}}
