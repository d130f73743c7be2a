"""A series of batches: one full extraction, then weekly deltas (Sunday about midday, NZ time).

Every batch has one file per extract and practice; all files of a batch share DateExtracted, DateFrom and
DateTo. The full batch holds every row; each delta holds the rows changed in its window (updated facts,
dimension members whose tracked attributes changed) and the new rows. Deterministic given the seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from random import Random
from typing import Iterable, Mapping, Sequence

from contracts.model import ExtractSpec

from worker.synth import faults as F
from worker.synth import values as V
from worker.synth.population import Population, Window, load_specs
from worker.synth.writer import ENCODINGS, GeneratedFile

DEFAULT_PRACTICES: tuple[tuple[int, int], ...] = ((685146, 535), (685146, 536))
DEFAULT_START = datetime(2025, 8, 19, 8, 50)


@dataclass
class Batch:
    """One extraction run: its window and its files (one per extract and practice)."""

    index: int
    kind: str  # "full" | "delta"
    date_from: datetime
    date_to: datetime
    date_extracted: datetime
    files: list[GeneratedFile] = field(default_factory=list)

    def file(self, extract: str, practice: tuple[int, int] | None = None) -> GeneratedFile:
        for f in self.files:
            if f.extract == extract and (practice is None or f.practice_key == tuple(practice)):
                return f
        raise KeyError((extract, practice))


def batch_windows(seed: int, start: datetime, deltas: int) -> list[tuple[datetime, datetime, datetime]]:
    """(DateFrom, DateTo, DateExtracted) per batch, minutes precision, NZ local.

    Full batch: extracted at ``start``, DateTo a few hours before, DateFrom one day before that (like the
    published sample, where the window does not tell full from delta). Deltas: the following Sundays,
    about midday, each window starting where the previous one ended.
    """
    rng = V.sub_rng(seed, "windows")
    start = start.replace(second=0, microsecond=0)
    to = start - timedelta(minutes=rng.randint(30, 240))
    out = [(to - timedelta(days=1), to, start)]
    prev_extracted, prev_to = start, to
    for _ in range(deltas):
        day = prev_extracted.date() + timedelta(days=1)
        while day.weekday() != 6:  # Sunday
            day += timedelta(days=1)
        extracted = datetime(day.year, day.month, day.day, 11, 45) + timedelta(minutes=rng.randint(0, 45))
        to = extracted - timedelta(minutes=rng.randint(5, 40))
        out.append((prev_to, to, extracted))
        prev_extracted, prev_to = extracted, to
    return out


def _loaded(rng: Random, date_to: datetime) -> str:
    secs = V.to_secs(date_to) - rng.randint(60, 300)
    return V.fmt_ts(V.fix_dst(secs), V.MS_POOL[rng.randrange(256)])


def build_series(
    seed: int = 1,
    patients: int = 100,
    practices: Sequence[tuple[int, int]] = DEFAULT_PRACTICES,
    deltas: int = 2,
    start: datetime = DEFAULT_START,
    *,
    faults: "F.FaultPlan | str | Iterable[str] | Mapping[str, int] | None" = None,
    specs: Mapping[str, ExtractSpec] | None = None,
    extracts: Iterable[str] | None = None,
    encoding: str = "utf-16-le",
    bom: bool = False,
    vary_tokens: bool = False,
) -> list[Batch]:
    """A full batch followed by ``deltas`` delta batches, every file's rows and bytes ready.

    ``patients`` is per practice. ``extracts`` limits which extracts get files (the population still
    holds the others so references stay consistent). ``faults`` see :class:`faults.FaultPlan`
    (default target: the last batch). ``vary_tokens`` uses the extract's other file-name spellings
    at random, as the provider does.
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}")
    if deltas < 0:
        raise ValueError("deltas must be >= 0")
    specs = load_specs(specs, extracts)
    wanted = None
    if extracts is not None:
        lower = {e.lower() for e in extracts}
        wanted = {n for n, s in specs.items()
                  if n.lower() in lower or any(t.lower() in lower for t in s.file_tokens)}
    plan = F.FaultPlan.parse(faults)
    pop = Population(specs, list(practices), patients, seed)
    token_rng = V.sub_rng(seed, "tokens")
    batches: list[Batch] = []
    for index, (dfrom, dto, dext) in enumerate(batch_windows(seed, start, deltas)):
        window = Window(V.to_secs(dfrom), V.to_secs(dto), _loaded(V.sub_rng(seed, "loaded", index), dto))
        data = pop.full(window) if index == 0 else pop.delta(window)
        batch = Batch(index, "full" if index == 0 else "delta", dfrom, dto, dext)
        for name in sorted(specs):
            if wanted is not None and name not in wanted:
                continue
            spec = specs[name]
            for pr in pop.practices:
                token = spec.file_tokens[0]
                if vary_tokens:
                    token = token_rng.choice(spec.file_tokens)
                batch.files.append(GeneratedFile(
                    extract=name, per_org_id=pr.per_org_id, practice_id=pr.practice_id,
                    date_from=dfrom, date_to=dto, date_extracted=dext, token=token,
                    field_count=spec.field_count, rows=data[(name, pr.key)], batch=index, kind=batch.kind,
                    encoding=encoding, bom=bom,
                ))
        batches.append(batch)
    files = all_files(batches)
    F.plant(files, specs, plan, V.sub_rng(seed, "faults"), batch_count=len(batches))
    for f in files:
        f.data = f.encode()
        F.corrupt(f)
    return batches


def all_files(batches: Iterable[Batch]) -> list[GeneratedFile]:
    return [f for b in batches for f in b.files]


__all__ = ["Batch", "build_series", "batch_windows", "all_files", "DEFAULT_PRACTICES", "DEFAULT_START"]
