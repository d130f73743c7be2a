"""The typing engine: contract rules applied column-wise to a file's raw rows (pyarrow compute + numpy).

- columns.py: one column's check, cast and typed Arrow array (types.py patterns, trimming, sentinel,
  plausible date range, money precision, Pacific/Auckland -> UTC via localtime.py).
- engine.py: a block of rows -> kept typed rows with nullify errors, rejects with every failing column,
  and dq counts.
- stage.py: one landed file from raw.<t> through the engine into stg.<t> / etl.rejects_<t> by binary COPY,
  with the duplicate-key rule over the whole file.
- tee.py: StagingTee, a file typed from raw landing's own COPY blocks in the pass that lands it (from
  while the raw COPY runs), and loaded into stg after raw.

The rules are those of contracts/sql/staging.py; their equivalence is a property test
(tests/integration/worker/pipeline/typing_engine/test_equivalence.py).
"""

from worker.pipeline.typing_engine.engine import DqCounts, TypingEngine, UnsupportedContract
from worker.pipeline.typing_engine.stage import EngineResult, stage_rows
from worker.pipeline.typing_engine.tee import StagingTee

__all__ = ["DqCounts", "EngineResult", "StagingTee", "TypingEngine", "UnsupportedContract", "stage_rows"]
