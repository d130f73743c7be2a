"""Pure parts of the end-to-end benchmark's report: medians, ratios, stage times, markdown, the plot.

No service is touched here (tests/unit/bench covers it). Conventions:
- every measurement is a list of runs (seconds); the report quotes their median;
- "x COPY" = COPY seconds / pipeline seconds, on the same rows (1.00x = as fast as a bare COPY);
- "x dlt" = dlt seconds / pipeline seconds (4.0x = four times as fast as dlt);
- MB/s and rows/s are of the source file (UTF-16LE bytes as delivered, rows in the file).
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

# Celery task name -> the stage of the pipeline it runs (names of worker/tasks.py). A task not listed
# here is reported under its own name; a stage whose task is missing is "not recorded".
STAGE_TASKS: dict[str, str] = {
    "indici.start_run": "plan",
    "indici.land_file": "land",
    "indici.stage_file": "stage",
    "indici.merge_run": "merge",
    "indici.finalise_run": "finalise",
}
STAGES = ("plan", "land", "stage", "merge")
# A task of another name counts for a stage when its name (after the last dot) is one of these words or
# starts with one and "_" (merge_dimensions, merge_facts_appointments, land_and_stage is not: see `other`).
_STAGE_WORDS = {"plan": "plan", "land": "land", "stage": "stage", "merge": "merge", "finalise": "finalise"}


def stage_of(task_name: str) -> str | None:
    """The stage a Celery task belongs to: STAGE_TASKS, else by its name's first word; None if unknown."""
    if task_name in STAGE_TASKS:
        return STAGE_TASKS[task_name]
    short = task_name.rsplit(".", 1)[-1]
    words = short.split("_")
    if words[0] in _STAGE_WORDS and not (len(words) > 2 and words[1] == "and"):
        return _STAGE_WORDS[words[0]]
    return None
NOT_RECORDED = "n/r"

TARGETS = {
    "e2e_vs_copy": 0.30,  # end to end at least 0.30x bare COPY (at 1M rows)
    "e2e_vs_dlt": 4.0,  # at least 4x dlt (at 1M rows)
    "land_vs_copy": 0.8,  # raw landing at least 0.8x bare COPY
    "worker_rss_mb": 300.0,  # worker RSS at most 300 MB at every size
    "scaling": 1.6,  # 2 workers at least 1.6x one
    "weekly_ratio": 1.2,  # 20th weekly merge within 1.2x of the first
}


def median(values: Iterable[float | None]) -> float | None:
    """Median of the values that are not None; None when there are none."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def largest(values: Iterable[float | None]) -> float | None:
    """Largest of the values that are not None; None when there are none."""
    present = [v for v in values if v is not None]
    return max(present) if present else None


def summary(values: Sequence[float | None]) -> dict[str, Any]:
    """{"runs": [...], "median": m} (rounded for the JSON)."""
    m = median(values)
    return {"runs": [None if v is None else round(v, 4) for v in values],
            "median": None if m is None else round(m, 4)}


def speed_ratio(reference_seconds: float | None, seconds: float | None) -> float | None:
    """How many times faster `seconds` is than `reference_seconds` (reference / seconds)."""
    if not reference_seconds or not seconds:
        return None
    return reference_seconds / seconds


def cpu_seconds(cpu: dict[str, Any] | None) -> float | None:
    """A run's CPU seconds: the worker tree's and the Postgres backends' (None unless both were measured)."""
    if not cpu or cpu.get("worker_s") is None or cpu.get("postgres_s") is None:
        return None
    return cpu["worker_s"] + cpu["postgres_s"]


def cpu_floor_seconds(cpu: dict[str, Any] | None, cpus: int, serial_s: float = 0.0) -> float | None:
    """The least wall time the measured work could take on `cpus` cores: the run's CPU seconds spread over
    every core with no idle moment, except `serial_s`, one core's work that nothing else overlaps (the
    merge, which runs after every file is staged, in one transaction on one backend: the chord's body,
    PRODUCT.md). The moto server's CPU is left out, so the floor is a lower bound; a target beyond it
    needs less CPU, not more overlap."""
    total = cpu_seconds(cpu)
    if total is None or cpus < 1:
        return None
    return serial_s + max(0.0, total - serial_s) / cpus


def serial_floor_seconds(cpu: dict[str, Any] | None, cpus: int, serial_s: float | None) -> float | None:
    """cpu_floor_seconds with `serial_s` seconds serial; None when the serial part was not recorded."""
    return None if serial_s is None else cpu_floor_seconds(cpu, cpus, serial_s)


def median_cpu(runs: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Median worker and Postgres CPU seconds over runs that recorded them (None when none did)."""
    measured = [r["cpu"] for r in runs if r.get("cpu")]
    if not measured:
        return None
    return {k: median(c.get(k) for c in measured) for k in ("worker_s", "postgres_s")}


def per_second(amount: float, seconds: float | None) -> float | None:
    return amount / seconds if seconds else None


def default_repeats(rows: int, requested: int | None) -> int:
    """--repeats when given, else 3 for sizes up to 1M rows and 1 above."""
    if requested is not None:
        return max(1, requested)
    return 3 if rows <= 1_000_000 else 1


def parse_sizes(text: str) -> list[int]:
    """"100k,1M,5000000" -> [100000, 1000000, 5000000]."""
    out = []
    for part in text.split(","):
        part = part.strip().lower().replace("_", "")
        if not part:
            continue
        m = re.fullmatch(r"(\d+(?:\.\d+)?)([km]?)", part)
        if not m:
            raise ValueError(f"not a size: {part!r} (e.g. 100000, 100k, 1m)")
        value = float(m.group(1)) * {"": 1, "k": 1_000, "m": 1_000_000}[m.group(2)]
        if value < 1:
            raise ValueError(f"a size must be at least 1 row: {part!r}")
        out.append(int(value))
    if not out:
        raise ValueError("no sizes given")
    return out


# -- the worker log -----------------------------------------------------------------------------------
_TASK_EVENT = re.compile(r"Task (?P<name>[\w.]+)\[(?P<id>[0-9a-f-]+)\] (?P<state>received|succeeded|ignored|retry|"
                         r"raised|failed)(?: in (?P<seconds>[0-9.eE+-]+)s)?")


def task_records(lines: Iterable[str]) -> list[dict[str, Any]]:
    """One record per Celery task in a worker log: name, id, state, seconds.

    `seconds` is Celery's own runtime of the task (`succeeded in Xs`); for a task that replaced itself
    by a canvas (`ignored`, e.g. start_run becoming the run's chord) it is the time from `received` to
    `ignored`, from the JSON log lines' timestamps. Lines that are neither JSON nor Celery's plain text
    are skipped."""
    tasks: dict[str, dict[str, Any]] = {}
    for line in lines:
        line = line.strip()
        text, stamp = line, None
        if line.startswith("{"):
            try:
                record = json.loads(line)
                text, stamp = str(record.get("event", "")), record.get("timestamp")
            except json.JSONDecodeError:
                pass
        m = _TASK_EVENT.search(text)
        if not m:
            continue
        # By name and id: a task that replaces itself hands its id on (start_run's id ends as finalise_run's).
        task = tasks.setdefault(f"{m.group('name')}[{m.group('id')}]", {
            "name": m.group("name"), "id": m.group("id"), "state": None, "seconds": None, "received": None,
            "ended": None})
        when = _timestamp(stamp)
        state = m.group("state")
        if state == "received":
            task["received"] = when
            continue
        task["state"], task["ended"] = state, when
        if m.group("seconds"):
            task["seconds"] = float(m.group("seconds"))
        elif state == "ignored" and task["received"] and when:
            task["seconds"] = (when - task["received"]).total_seconds()
    return list(tasks.values())


def raw_landing_seconds(lines: Iterable[str]) -> float | None:
    """Seconds of raw landing proper (S3 spool + the raw COPY) summed over the "file landed" events of a
    worker log: the land task also types the file and loads stg in the same pass, so its runtime is
    landing and staging together. None when no such event was logged."""
    total, seen = 0.0, False
    for line in lines:
        line = line.strip()
        if not line.startswith("{") or '"file landed"' not in line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("event") != "file landed":
            continue
        parts = [record.get("spool_seconds"), record.get("copy_seconds")]
        if all(isinstance(p, (int, float)) for p in parts):
            total += sum(parts)
            seen = True
    return total if seen else None


def _timestamp(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def stage_seconds(tasks: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Seconds per stage from task records: the sum of the task runtimes of each stage (task-seconds:
    with parallel workers this exceeds the wall time), `NOT_RECORDED` for a stage no task reported, and
    the other tasks under their own names (`other`)."""
    out: dict[str, Any] = {stage: None for stage in STAGES}
    other: dict[str, float] = {}
    for task in tasks:
        if task["seconds"] is None or task["state"] not in ("succeeded", "ignored"):
            continue
        stage = stage_of(task["name"])
        if stage in STAGES:
            out[stage] = (out[stage] or 0.0) + task["seconds"]
        else:
            key = stage or task["name"]
            other[key] = other.get(key, 0.0) + task["seconds"]
    out["other"] = other
    return out


def ledger_marks(run: dict[str, Any], files: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Seconds after the run's started_at of the last file's value of every timestamp the ledger keeps
    for its files (discovered_at, landed_at, staged_at, merged_at, ... whatever the table has) and the
    run's finished_at; marks with no value are left out."""
    start = run.get("started_at")
    if start is None:
        return {}
    marks: dict[str, float] = {}
    columns = sorted({k for f in files for k in f if k.endswith("_at")})
    for column in columns:
        values = [f[column] for f in files if f.get(column) is not None]
        if values:
            marks[column] = (max(values) - start).total_seconds()
    if run.get("finished_at") is not None:
        marks["run finished_at"] = (run["finished_at"] - start).total_seconds()
    return dict(sorted(marks.items(), key=lambda kv: kv[1]))


# -- formatting --------------------------------------------------------------------------------------
def fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    if value is None:
        return NOT_RECORDED
    return f"{value:{spec}}{suffix}"


def fmt_rows(rows: int) -> str:
    if rows >= 1_000_000 and rows % 100_000 == 0:
        return f"{rows / 1_000_000:g}M"
    if rows >= 1_000 and rows % 100 == 0:
        return f"{rows / 1_000:g}k"
    return f"{rows:,}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table (first column left-aligned, the others right-aligned)."""
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def target_checks(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets against the measured medians (None = not measured in this run)."""
    checks: list[dict[str, Any]] = []
    sizes = report.get("sizes", [])
    at = next((s for s in sizes if s["rows"] == 1_000_000), sizes[-1] if sizes else None)
    if at is not None:
        label = fmt_rows(at["rows"])
        checks.append(_check(f"end to end vs bare COPY at {label}", at.get("x_copy"), TARGETS["e2e_vs_copy"], ">="))
        checks.append(_check(f"end to end vs dlt at {label}", at.get("x_dlt"), TARGETS["e2e_vs_dlt"], ">="))
        stages = at.get("stages") or {}
        landing = stages.get("raw_landing") if stages.get("raw_landing") is not None else stages.get("land")
        land = speed_ratio((at.get("copy") or {}).get("median"), landing)
        checks.append(_check(f"raw landing (S3 spool + raw COPY) vs bare COPY at {label}", land,
                             TARGETS["land_vs_copy"], ">="))
    rss = [s["rss"].get("worker_child_mb") for s in sizes if s.get("rss")]
    size_rss = rss if rss and all(r is not None for r in rss) else []
    weekly_rss = [r for r in (report.get("weekly") or {}).get("worker_child_mb") or [] if r is not None]
    if size_rss or weekly_rss:
        covered = (("at any size", size_rss), ("in any weekly Patients run", weekly_rss))
        where = " and ".join(w for w, measured in covered if measured)
        checks.append(_check(f"worker process RSS, largest {where} (MB)", max(size_rss + weekly_rss),
                             TARGETS["worker_rss_mb"], "<="))
    multi = report.get("multi_file")
    if multi:
        checks.append(_check("2 workers vs 1 on a multi-file batch", multi.get("scaling"), TARGETS["scaling"], ">="))
    weekly = report.get("weekly")
    if weekly:
        checks.append(_check(f"merge of week {weekly['weeks']} / week 1", weekly.get("ratio"),
                             TARGETS["weekly_ratio"], "<="))
    return checks


def _check(what: str, value: float | None, threshold: float, op: str) -> dict[str, Any]:
    met = None if value is None else (value >= threshold if op == ">=" else value <= threshold)
    return {"target": what, "value": None if value is None else round(value, 3), "threshold": threshold,
            "op": op, "met": met}


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown: sizes, stages, ledger marks, memory, multi-file, weekly, targets."""
    meta = report["meta"]
    cpus = int(meta.get("cpus") or 1)
    out = [f"# End-to-end benchmark ({meta['started']})", "",
           f"`{meta['command']}` on {meta['cpus']} CPUs, commit `{meta['commit']}`"
           + (f" (this page rendered from the JSON at `{meta['rendered_at_commit']}`)"
              if meta.get("rendered_at_commit") else "")
           + ". Medians of the repeats "
           "(runs in the JSON). Rows/s and MB/s of the source file (UTF-16LE as delivered); x COPY = bare COPY "
           "seconds / seconds (1.00x = as fast as COPY), x dlt = dlt seconds / seconds.", ""]
    sizes = report.get("sizes", [])
    if sizes:
        rows = []
        for s in sizes:
            mb = s["bytes"] / 1e6
            for label, key in (("pipeline S3 -> core (Celery)", "e2e"), ("bare COPY, all-text table", "copy"),
                               ("dlt 1.31 merge (arrow, csv loader)", "dlt")):
                seconds = (s.get(key) or {}).get("median")
                rows.append([f"{fmt_rows(s['rows'])} rows, {mb:,.0f} MB" if key == "e2e" else "", label,
                             fmt(seconds), fmt(per_second(s["rows"], seconds), ",.0f"),
                             fmt(per_second(mb, seconds), ".1f"),
                             fmt(speed_ratio((s.get("copy") or {}).get("median"), seconds), ".3f", "x"),
                             fmt(speed_ratio((s.get("dlt") or {}).get("median"), seconds), ".2f", "x"),
                             str(s["repeats"])])
        out += ["## Appointments, one file, by size", "",
                table(["size", "path", "seconds", "rows/s", "MB/s", "x COPY", "x dlt", "runs"], rows), ""]
        stage_rows = []
        for s in sizes:
            st = s.get("stages", {})
            other = ", ".join(f"{k} {v:.2f}" for k, v in (st.get("other") or {}).items()) or "-"
            landing = st.get("raw_landing")
            stage_rows.append([fmt_rows(s["rows"])] + [fmt(st.get(k)) for k in STAGES] + [fmt(landing)]
                              + [fmt(speed_ratio((s.get("copy") or {}).get("median"),
                                                 landing if landing is not None else st.get("land")), ".2f", "x"),
                                 other])
        out += ["### Seconds per stage (Celery task runtimes from the worker log, medians)", "",
                "Each stage's task as Celery timed it; plan = `start_run` (discovery, ledger, dispatch) from "
                f"received to replaced. `{NOT_RECORDED}` = no task of that stage ran (not recorded), e.g. "
                "when a pipeline does two stages in one task: see `other`. The land task stages the file in "
                "the same pass (STAGE_WHILE_LANDING), so `land` is landing and staging and `stage` is the "
                "stage task finding nothing left to do; `raw landing` is the S3 spool and the raw COPY "
                "alone (the worker log's `file landed` events), which `land x COPY` compares with bare COPY.",
                "", table(["size", *STAGES, "raw landing", "land x COPY", "other tasks"], stage_rows), ""]
        mark_names = sorted({k for s in sizes for k in (s.get("ledger_marks") or {})},
                            key=lambda k: median(s.get("ledger_marks", {}).get(k) for s in sizes) or 0)
        if mark_names:
            out += ["### What the ledger records (seconds after the run's started_at, medians)", "",
                    "The last file's value of each timestamp column of etl.load_run_files, and the run's "
                    "finished_at (etl.load_runs). Where a column is stamped (the start or the end of its "
                    "step, or Postgres' now(), the start of the step's transaction) is the pipeline's choice, "
                    "so these are marks, not stage durations.", "",
                    table(["size", *mark_names],
                          [[fmt_rows(s["rows"])] + [fmt((s.get("ledger_marks") or {}).get(k)) for k in mark_names]
                           for s in sizes]), ""]
        mem_rows = []
        for s in sizes:
            r = s.get("rss") or {}
            mem_rows.append([fmt_rows(s["rows"]), fmt(r.get("worker_main_mb"), ".0f"),
                             fmt(r.get("worker_child_mb"), ".0f"), fmt(r.get("worker_tree_mb"), ".0f"),
                             fmt(r.get("postgres_backend_mb"), ".0f"), fmt(r.get("cli_mb"), ".0f"),
                             fmt(r.get("moto_mb"), ".0f"), fmt(r.get("dlt_mb"), ".0f"), fmt(r.get("bench_mb"), ".0f")])
        out += ["### Peak RSS (MB, medians)", "",
                "psutil samples every 0.2 s (moto 1 s): the Celery worker's main process, its busiest pool "
                "process, the whole worker tree at one moment; the largest Postgres backend of the run's "
                "database (every 0.5 s; its RSS includes the shared buffers it touched); the CLI process that "
                "started the backfill and waited; the moto S3 server; dlt's process (VmHWM); this benchmark "
                "process (VmHWM so far).", "",
                table(["size", "worker main", "worker process", "worker tree", "postgres backend", "CLI", "moto",
                       "dlt", "bench"], mem_rows), ""]
        cpu_rows = [[fmt_rows(s["rows"]), fmt((s.get("cpu") or {}).get("worker_s"), ".1f"),
                     fmt((s.get("cpu") or {}).get("postgres_s"), ".1f"), fmt((s.get("e2e") or {}).get("median"), ".1f")]
                    for s in sizes]
        out += ["### CPU seconds during the run (psutil, medians)", "",
                "User + system CPU of the Celery worker's process tree and of the Postgres backends of the run's "
                "database, beside the run's wall seconds (two cores: at most 2 CPU seconds per second).", "",
                table(["size", "worker CPU s", "postgres CPU s", "wall s"], cpu_rows), ""]
        floor_rows = []
        for s in sizes:
            floor = cpu_floor_seconds(s.get("cpu"), cpus)
            copy = (s.get("copy") or {}).get("median")
            used = cpu_seconds(s.get("cpu"))
            serial = serial_floor_seconds(s.get("cpu"), cpus, (s.get("stages") or {}).get("merge"))
            floor_rows.append([fmt_rows(s["rows"]), fmt(used, ".1f"), fmt(floor, ".1f"),
                               fmt(speed_ratio(copy, floor), ".3f", "x"), fmt(serial, ".1f"),
                               fmt(speed_ratio(copy, serial), ".3f", "x"),
                               fmt((s.get("e2e") or {}).get("median"), ".1f"),
                               fmt(None if copy is None else cpus * copy / TARGETS["e2e_vs_copy"], ".1f")])
        out += ["### What the CPU allows", "",
                f"The CPU floor is the run's CPU seconds (worker + Postgres, the table above) over the {cpus} cores: "
                "the wall time with both cores busy every moment (moto's CPU left out, so a lower bound). "
                "`best x COPY` is bare COPY over that floor: no overlap of the same work can do better. "
                "The merge runs after the file is staged, in one transaction on one backend, so its seconds "
                "overlap nothing: `with the merge serial` is the merge stage's seconds plus the rest of the CPU "
                f"over the cores. `CPU s allowed` is what {TARGETS['e2e_vs_copy']:.2f}x COPY leaves ({cpus} x COPY "
                f"seconds / {TARGETS['e2e_vs_copy']:.2f}) with perfect overlap.", "",
                table(["size", "CPU s used", "CPU floor s", "best x COPY", "floor with the merge serial s",
                       "best x COPY, merge serial", "wall s", "CPU s allowed"], floor_rows), ""]
    multi = report.get("multi_file")
    if multi:
        rows = [[f"{w} worker process{'es' if w != '1' else ''}", fmt(m.get("median")),
                 fmt(per_second(multi["rows"], m.get("median")), ",.0f"), str(len(m["runs"]))]
                for w, m in multi["workers"].items()]
        out += [f"## Multi-file batch: {multi['files']} Appointments files x {multi['rows_per_file']:,} rows", "",
                table(["workers", "seconds", "rows/s", "runs"], rows), "",
                f"Scaling (1 process / 2 processes): **{fmt(multi.get('scaling'), '.2f', 'x')}**", ""]
        two_runs = [r for r in multi.get("runs", []) if str(r.get("workers")) == "2"]
        two = median_cpu(two_runs)
        floor = cpu_floor_seconds(two, cpus)
        merge = median((r.get("stages") or {}).get("merge") for r in two_runs)
        serial = serial_floor_seconds(two, cpus, merge)
        one = (multi["workers"].get("1") or {}).get("median")
        if floor is not None and one is not None:
            line = (f"CPU floor of the 2-process runs: {fmt(floor, '.1f')} s "
                    f"({fmt(cpu_seconds(two), '.1f')} CPU s over {cpus} cores), so at this CPU 2 processes could "
                    "be at most "
                    f"**{fmt(speed_ratio(one, floor), '.2f', 'x')}** one")
            if serial is not None:
                line += (f"; with their merge serial ({fmt(merge, '.1f')} s on one backend after every file is "
                         f"staged) at most **{fmt(speed_ratio(one, serial), '.2f', 'x')}**")
            out += [line + ".", ""]
    weekly = report.get("weekly")
    if weekly:
        rss = weekly.get("worker_child_mb") or [None] * len(weekly["rows"])
        rows = [[str(i + 1), f"{n:,}", fmt(m), fmt(r, ".0f")]
                for i, (n, m, r) in enumerate(zip(weekly["rows"], weekly["merge_median"], rss))]
        rate = weekly.get("change_rate") or {}
        change = (f"each week {rate['updated']:.0%} of the patients change a tracked attribute and "
                  f"{rate['new']:.0%} more register (the generator's weekly rates); " if rate else "")
        out += [f"## {weekly['weeks']} weekly full Patients files (merge seconds, {weekly['source']})", "",
                f"One run per week, each file holding every current patient: {change}one database for the "
                "series, so the history grows.", "",
                "worker process RSS: the busiest worker pool process of the week's run (MB; Patients has "
                "220 columns, so its typing blocks are the largest).", "",
                table(["week", "rows", "merge s", "worker process RSS"], rows), "",
                f"Week {weekly['weeks']} / week 1: **{fmt(weekly.get('ratio'), '.2f', 'x')}** "
                f"(per row: {fmt(weekly.get('ratio_per_row'), '.2f', 'x')}; the file grows as patients register)", ""]
    checks = report.get("targets") or []
    if checks:
        out += ["## Targets (issue 7)", "",
                table(["target", "measured", "wanted", "met"],
                      [[c["target"], fmt(c["value"], ".3f"), f"{c['op']} {c['threshold']:g}",
                        {True: "yes", False: "**no**", None: "not measured"}[c["met"]]] for c in checks]), ""]
    notes = report.get("notes") or []
    if notes:
        out += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(out)


def plot(report: dict[str, Any], path) -> None:  # noqa: ANN001 - a path
    """A PNG: rows/s by size per path; seconds per stage by size; the weekly merge times."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = report.get("sizes", [])
    weekly = report.get("weekly")
    panels = 2 + (1 if weekly else 0)
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.2))
    labels = [fmt_rows(s["rows"]) for s in sizes]
    x = range(len(sizes))
    ax = axes[0]
    width = 0.27
    for i, (key, name) in enumerate((("e2e", "pipeline (Celery)"), ("copy", "bare COPY"), ("dlt", "dlt 1.31"))):
        values = [per_second(s["rows"], (s.get(key) or {}).get("median")) or 0 for s in sizes]
        ax.bar([p + (i - 1) * width for p in x], values, width, label=name)
    ax.set_xticks(list(x), labels)
    ax.set_yscale("log")
    ax.set_ylabel("rows/s (log scale)")
    ax.set_title("Appointments S3 -> core, rows/s")
    ax.legend()
    ax = axes[1]
    bottom = [0.0] * len(sizes)
    for stage in STAGES:
        values = [(s.get("stages") or {}).get(stage) or 0.0 for s in sizes]
        ax.bar(list(x), values, 0.5, bottom=bottom, label=stage)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("seconds (task runtime)")
    ax.set_title("seconds per stage")
    ax.legend()
    if weekly:
        ax = axes[2]
        ax.plot(range(1, len(weekly["merge_median"]) + 1), [m or 0 for m in weekly["merge_median"]], marker="o")
        ax.set_xlabel("week")
        ax.set_ylabel("merge seconds")
        ax.set_title("weekly full Patients file: merge")
        ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
