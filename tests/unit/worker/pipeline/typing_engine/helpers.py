"""What the typing engine's unit tests share: a generated Appointments file with planted faults as the
COPY text raw landing writes, and that text typed the way a pass types it (stg COPY bytes, rejects)."""

from __future__ import annotations

import io
import types
from datetime import datetime, timezone
from functools import lru_cache

from contracts.registry import get as get_spec
from worker.io.indici_reader import IndiciReader, encode_rows
from worker.pipeline.land import LINEAGE_PREFIX_COLUMNS, copy_columns
from worker.pipeline.typing_engine import stage
from worker.pipeline.typing_engine.engine import TypingEngine
from worker.synth import generate

SPEC = get_spec("Appointments")
COLUMNS = copy_columns(SPEC)
AT = datetime(2025, 8, 12, 8, 50, tzinfo=timezone.utc)
RECORD = types.SimpleNamespace(file_id=7, load_run_id=3, s3_version_id="v1", file_hash="0" * 64,
                               date_extracted=AT, date_to=AT)
PREFIX = "".join("x\t" for _ in LINEAGE_PREFIX_COLUMNS)
# Row faults that reject a row, nullify a value, or leave text the COPY must escape.
FAULTS = {"bad_timestamp": 25, "impossible_date": 10, "unknown_domain_value": 10, "missing_required": 10,
          "bad_reference": 10, "nasty_text": 2, "dst_times": 5}


@lru_cache(maxsize=None)
def faulty_copy_text() -> bytes:
    """A generated Appointments file with planted faults, as the COPY text raw landing writes."""
    batches = generate(seed=11, patients=400, deltas=0, extracts=["Appointments"], faults=FAULTS)
    rows = [row for batch in batches for f in batch.files if f.extract == "Appointments" for row in f.rows]
    reader = IndiciReader([encode_rows(rows)], SPEC.field_count)
    return b"".join(reader.copy_bytes(PREFIX))


def finished(rows: stage._TypedRows, stg: io.BytesIO) -> tuple[bytes, bytes, stage._TypedRows]:
    """A pass's output once its rows ended: the stg COPY bytes, the rejects' COPY bytes, the rows."""
    rows.rejects_spool.seek(0)
    rejects = rows.rejects_spool.read()
    rows.close()
    return stg.getvalue(), rejects, rows


def type_file(text: bytes, threads: int, read_bytes: int) -> tuple[bytes, bytes, stage._TypedRows]:
    """The whole text typed by one pass (as after the raw COPY)."""
    engine = TypingEngine(SPEC, {})
    stg = io.BytesIO()
    rows = stage._TypedRows(SPEC, RECORD, engine, None, stg.write)
    blocks = stage._copy_text_blocks(io.BytesIO(text), COLUMNS, SPEC, read_bytes)
    stage.type_blocks_into(rows, blocks, engine, threads, None, stg.write)
    return finished(rows, stg)
