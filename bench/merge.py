"""Merge benchmark: 1M staged Appointments into core.fact_appointment, first load and all-conflicting
reload, beside bare COPY and a plain INSERT .. ON CONFLICT of the same rows, in one run.

    python -m bench.merge --rows 1000000 --repeats 3

Set-up (not timed): two generated files with the same keys (the second extracted a week later, so every
row of the reload conflicts and is newer), landed and staged by the real pipeline. Timed, each repeat on
emptied targets:
- bare COPY: the staged rows' core columns copied (binary) into a table shaped like the fact, no indexes;
- plain upsert: INSERT .. SELECT .. ON CONFLICT (natural key) DO UPDATE into a table with only the
  natural-key unique constraint, first load then the reload;
- merge_extract: the product's fact merge (newest-wins guard, FK resolution, inferred members, dim_date,
  lineage), first load then the reload.
Ratios are COPY time / step time (1.0 = as fast as bare COPY). Medians of repeats.
"""

from __future__ import annotations

import tempfile
from datetime import datetime
from pathlib import Path

from psycopg import sql

from bench.common import median, parse_args, row, scratch_settings, timed
from contracts.registry import get as get_spec
from contracts.schema import core_attribute_columns
from worker.io.db import connect
from worker.io.s3 import make_client
from worker.pipeline.merge import merge_extract
from worker.pipeline.run import Selection, plan_run, process_file
from worker.synth.writer import generate_extract

SPEC = get_spec("Appointments")
LINEAGE = ["load_file_id", "row_number", "s3_version_id", "file_hash", "date_extracted", "date_to", "load_run_id"]


def _stage_files(settings, rows: int, tmp: Path) -> list[int]:
    s3 = make_client(settings)
    for index, extracted in enumerate((datetime(2025, 8, 12, 8, 50), datetime(2025, 8, 19, 8, 50))):
        folder = tmp / str(index)
        folder.mkdir()
        generated = generate_extract(SPEC, rows, seed=1, out=folder, date_extracted=extracted)
        s3.upload_file(str(generated.path), settings.s3_bucket, generated.path.name)
        generated.path.unlink()
    with connect(settings) as conn:
        plan = plan_run(conn, s3, settings, Selection(kind="backfill", date_from=datetime(2025, 1, 1).date(),
                                                      date_to=datetime(2026, 1, 1).date()))
        for file_id in plan.file_ids:
            assert process_file(conn, s3, file_id, settings) == "staged"
        conn.execute("ANALYZE stg.appointments")
        conn.commit()
    return sorted(plan.file_ids)


def _core_columns() -> list[str]:
    return [c.name for c in core_attribute_columns(SPEC)] + LINEAGE


def _reset(conn) -> None:
    conn.execute("TRUNCATE core.fact_appointment, core.dim_patient, core.dim_provider, core.dim_practice, "
                 "core.dim_vaccine, core.dim_medicine CASCADE")
    conn.execute("DROP TABLE IF EXISTS public.bench_copy, public.bench_upsert")
    columns = _core_columns()
    conn.execute(sql.SQL("CREATE TABLE public.bench_copy AS SELECT {} FROM core.fact_appointment WITH NO DATA").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in columns)))
    conn.execute(sql.SQL("CREATE TABLE public.bench_upsert (LIKE public.bench_copy, UNIQUE ({}))").format(
        sql.SQL(", ").join(sql.Identifier(k) for k in SPEC.natural_key)))
    conn.commit()


def _bare_copy(conn, dump: Path) -> float:
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in _core_columns())

    def copy() -> None:
        statement = sql.SQL("COPY public.bench_copy ({}) FROM STDIN (FORMAT binary)").format(columns)
        with conn.cursor() as cur, cur.copy(statement) as cp:
            with dump.open("rb") as fh:
                while chunk := fh.read(8 << 20):
                    cp.write(chunk)
        conn.commit()

    return timed(copy)[0]


def _dump(conn, file_id: int, dump: Path) -> None:
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in _core_columns())
    with conn.cursor() as cur, dump.open("wb") as fh:
        statement = sql.SQL(
            "COPY (SELECT {} FROM stg.appointments WHERE load_file_id = {}) TO STDOUT (FORMAT binary)"
        ).format(columns, sql.Literal(file_id))
        with cur.copy(statement) as cp:
            for data in cp:
                fh.write(data)


def _plain_upsert(conn, file_id: int) -> float:
    columns = _core_columns()
    statement = sql.SQL(
        "INSERT INTO public.bench_upsert ({cols}) SELECT {cols} FROM stg.appointments WHERE load_file_id = %s "
        "ON CONFLICT ({keys}) DO UPDATE SET {sets}"
    ).format(
        cols=sql.SQL(", ").join(sql.Identifier(c) for c in columns),
        keys=sql.SQL(", ").join(sql.Identifier(k) for k in SPEC.natural_key),
        sets=sql.SQL(", ").join(sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c))
                                for c in columns if c not in SPEC.natural_key),
    )

    def upsert() -> None:
        conn.execute(statement, (file_id,))
        conn.commit()

    return timed(upsert)[0]


def _merge(conn, settings, file_id: int) -> tuple[float, object]:
    def merge():
        result = merge_extract(conn, SPEC, [file_id], settings)
        conn.commit()
        return result

    return timed(merge)


def main() -> int:
    args = parse_args(__doc__)
    with scratch_settings() as settings, tempfile.TemporaryDirectory(prefix="indici-bench-") as tmp:
        first, reload = _stage_files(settings, args.rows, Path(tmp))
        dump = Path(tmp) / "stg.bin"
        results: dict[str, list[float]] = {k: [] for k in ("copy", "upsert1", "upsert2", "merge1", "merge2")}
        notes = ""
        with connect(settings) as conn:
            _dump(conn, first, dump)
            megabytes = dump.stat().st_size / 1e6
            for _ in range(args.repeats):
                _reset(conn)
                results["copy"].append(_bare_copy(conn, dump))
                results["upsert1"].append(_plain_upsert(conn, first))
                results["upsert2"].append(_plain_upsert(conn, reload))
                seconds, merged = _merge(conn, settings, first)
                results["merge1"].append(seconds)
                seconds, remerged = _merge(conn, settings, reload)
                results["merge2"].append(seconds)
                notes = (f"first load: {merged.inserted} inserted, inferred {merged.inferred}; "
                         f"reload: {remerged.updated} updated")
        base = median(results["copy"])
        n = args.rows
        print(f"\nmedians of {args.repeats} runs, {n:,} staged Appointments ({megabytes:.0f} MB as binary COPY):")
        print(row("bare COPY (binary) into fact-shaped", base, n, megabytes, None, "(baseline)"))
        print(row("plain INSERT..ON CONFLICT, first", median(results["upsert1"]), n, megabytes, base))
        print(row("plain INSERT..ON CONFLICT, reload", median(results["upsert2"]), n, megabytes, base))
        print(row("merge_extract, first load", median(results["merge1"]), n, megabytes, base))
        print(row("merge_extract, all-conflicting reload", median(results["merge2"]), n, megabytes, base))
        print(notes)
        print("raw runs (s):", {k: [round(x, 2) for x in v] for k, v in results.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
