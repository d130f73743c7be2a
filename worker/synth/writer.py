"""File bytes, file names and output (folder, S3, streaming) for synthetic Indici extracts.

Bytes: UTF-16LE (default, no BOM unless asked) or UTF-8; ``|^^|`` between fields, ``|~~|`` after every
row including the last; no header, quoting or escaping.

Names: ``<PerOrgID>_<PracticeID>_<ExtractType>_<yyyyMMddHHmm>_<yyyyMMddHHmm>_<yyMMddHHmm>.csv``
(DateFrom, DateTo, DateExtracted in NZ local time).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Iterable, Sequence

from contracts.model import ExtractSpec
from contracts.types import ContractType

from worker.synth import values as V

if TYPE_CHECKING:  # pragma: no cover
    from worker.synth.faults import InjectedFault

SEP = "|^^|"
TERM = "|~~|"
ENCODINGS = ("utf-16-le", "utf-8")
MANIFEST_NAME = "manifest.json"


def file_name(per_org_id: int | str, practice_id: int | str, token: str, date_from: datetime,
              date_to: datetime, date_extracted: datetime, suffix: str = ".csv") -> str:
    """``685146_535_Patients_202508180544_202508190544_2508190850.csv``"""
    return (f"{per_org_id}_{practice_id}_{token}_{date_from:%Y%m%d%H%M}_{date_to:%Y%m%d%H%M}_"
            f"{date_extracted:%y%m%d%H%M}{suffix}")


def bom_bytes(encoding: str) -> bytes:
    return "\ufeff".encode(encoding)


def encode_rows(rows: Sequence[Sequence[str]], encoding: str = "utf-16-le", bom: bool = False) -> bytes:
    """The bytes of a file holding ``rows``."""
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}")
    text = TERM.join(map(SEP.join, rows)) + TERM if rows else ""
    data = text.encode(encoding, "surrogatepass")
    return (bom_bytes(encoding) + data) if bom else data


@dataclass
class GeneratedFile:
    """One generated extract file: where it belongs, what a correct reader returns, and what was planted.

    ``rows`` are the intended rows in file order (what a correct reader returns, planted row-level faults
    included); ``data`` the bytes (after byte-level faults such as invalid_utf16 or truncated_last_row).
    """

    extract: str
    per_org_id: int
    practice_id: int
    date_from: datetime
    date_to: datetime
    date_extracted: datetime
    token: str
    field_count: int
    rows: list[list[str]]
    batch: int = 0
    kind: str = "full"  # full | delta | single
    encoding: str = "utf-16-le"
    bom: bool = False
    faults: list["InjectedFault"] = field(default_factory=list)
    data: bytes = b""

    @property
    def name(self) -> str:
        return file_name(self.per_org_id, self.practice_id, self.token, self.date_from, self.date_to,
                         self.date_extracted)

    @property
    def practice_key(self) -> tuple[int, int]:
        return (self.per_org_id, self.practice_id)

    @property
    def row_count(self) -> int:
        return len(self.rows)

    @property
    def fatal_fault(self) -> "InjectedFault | None":
        """The planted fault that makes a correct reader reject the whole file, if any."""
        for f in self.faults:
            if f.fatal:
                return f
        return None

    def encode(self) -> bytes:
        """Bytes of the intended rows (no byte-level faults)."""
        return encode_rows(self.rows, self.encoding, self.bom)

    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def describe(self) -> dict[str, Any]:
        return {
            "extract": self.extract,
            "per_org_id": self.per_org_id,
            "practice_id": self.practice_id,
            "batch": self.batch,
            "kind": self.kind,
            "date_from": self.date_from.strftime("%Y-%m-%d %H:%M"),
            "date_to": self.date_to.strftime("%Y-%m-%d %H:%M"),
            "date_extracted": self.date_extracted.strftime("%Y-%m-%d %H:%M"),
            "rows": len(self.rows),
            "field_count": self.field_count,
            "encoding": self.encoding,
            "bom": self.bom,
            "bytes": len(self.data),
            "sha256": self.sha256(),
            "faults": [f.to_dict() for f in self.faults],
        }


def manifest(files: Iterable[GeneratedFile]) -> dict[str, Any]:
    """A stable description of the files: ``{"files": {name: {extract, rows, faults, ...}}}``."""
    out = {f.name: f.describe() for f in files}
    return {"format": "indici-synth/1", "files": dict(sorted(out.items()))}


def manifest_json(files: Iterable[GeneratedFile]) -> str:
    return json.dumps(manifest(files), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_folder(files: Sequence[GeneratedFile], path: str | Path, *, write_manifest: bool = True) -> Path:
    """Write every file (and ``manifest.json``) into ``path`` (created if missing). Returns the folder."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        raise ValueError("two generated files share a name")
    for f in files:
        (folder / f.name).write_bytes(f.data)
    if write_manifest:
        (folder / MANIFEST_NAME).write_text(manifest_json(files), encoding="utf-8")
    return folder


def write_s3(files: Sequence[GeneratedFile], bucket: str, prefix: str, s3_client: Any, *,
             manifest_key: str | None = None) -> list[str]:
    """``put_object`` every file at ``<prefix><file name>``; optionally the manifest too. Returns the keys."""
    keys = []
    for f in files:
        key = f"{prefix}{f.name}"
        s3_client.put_object(Bucket=bucket, Key=key, Body=f.data)
        keys.append(key)
    if manifest_key:
        s3_client.put_object(Bucket=bucket, Key=manifest_key, Body=manifest_json(files).encode("utf-8"),
                             ContentType="application/json")
    return keys


# ---------------------------------------------------------------------------------------------------
# Streaming one large extract (benchmarks): rows are never all in memory
# ---------------------------------------------------------------------------------------------------


@dataclass
class StreamedFile:
    """What :func:`generate_extract` wrote."""

    name: str
    path: Path | None
    rows: int
    bytes: int
    sha256: str
    seconds: float


def _ref_range(extract: str, n_rows: int, target: ExtractSpec | None) -> tuple[int, int]:
    base = 1_000_000 + (V.stable_hash(extract) % 89) * 100_000
    size = max(1, n_rows // 4 if (target is None or target.is_dimension) else n_rows)
    return base, size


def generate_extract(
    spec: ExtractSpec,
    n_rows: int,
    seed: int = 1,
    out: str | Path | IO[bytes] | None = None,
    *,
    practice: tuple[int, int] = (685146, 535),
    date_extracted: datetime = datetime(2025, 8, 19, 8, 50),
    chunk_rows: int = 50_000,
    encoding: str = "utf-16-le",
    bom: bool = False,
    specs: dict[str, ExtractSpec] | None = None,
) -> StreamedFile:
    """Stream ``n_rows`` rows of one extract to ``out`` (a folder, a file path or a binary file object).

    References point into synthetic id ranges (there is no population); values follow the same
    generators as :mod:`worker.synth.population`. Only ``chunk_rows`` rows are in memory at a time.
    With ``out=None`` the bytes are hashed and counted but not kept.
    """
    import time

    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}")
    t0 = time.perf_counter()
    date_to = date_extracted - timedelta(minutes=186)
    date_from = date_to - timedelta(days=1)
    name = file_name(practice[0], practice[1], spec.file_tokens[0], date_from, date_to, date_extracted)
    pr = V.make_practice(practice[0], practice[1], 0)
    hi = V.to_secs(date_to)
    lo = hi - 730 * V.DAY
    loaded = V.fmt_ts(hi - 61, ".350")
    rng = V.sub_rng(seed, "stream", spec.extract, practice)
    id_base = 1_000_000 + (V.stable_hash(spec.extract) % 89) * 100_000
    main = V.main_date_column(spec)
    ref_cols = [c for c in spec.columns if c.references and c.column != spec.id_column
                and c.column not in ("practice_id", "per_org_id")]
    ranges = {c.column: _ref_range(c.references, n_rows, (specs or {}).get(c.references))  # type: ignore[arg-type]
              for c in ref_cols}
    nhi_taken: set[str] = set()
    nhi_cols = [c.column for c in spec.columns if V.is_nhi_column(c) and c.type is ContractType.TEXT]

    path: Path | None = None
    close = False
    if out is None:
        fh = None
    elif isinstance(out, (str, Path)):
        p = Path(out)
        path = p / name if p.is_dir() else p
        fh = path.open("wb")
        close = True
    else:
        fh = out
    hasher = hashlib.sha256()
    total = 0

    def emit(b: bytes) -> None:
        nonlocal total
        hasher.update(b)
        total += len(b)
        if fh is not None:
            fh.write(b)

    try:
        if bom:
            emit(bom_bytes(encoding))
        done = 0
        while done < n_rows:
            n = min(chunk_rows, n_rows - done)
            r = rng.random
            future = 0.08 if main and "schedule" in main else 0.0
            anchor = [V.fix_dst(hi + 3600 + int(r() * 42 * V.DAY)) if future and r() < future
                      else V.fix_dst(lo + int(r() * (hi - lo))) for _ in range(n)]
            ins = [V.fix_dst(min(a, hi) - int(r() * 14 * V.DAY)) for a in anchor]
            fixed: dict[str, list[str]] = {}
            if spec.id_column == "practice_id":
                fixed[spec.id_column] = [str(practice[1])] * n
            else:
                fixed[spec.id_column] = [str(id_base + done + i) for i in range(n)]
            for c in ref_cols:
                base, size = ranges[c.column]
                empty = 0.0 if c.required else 0.1
                fixed[c.column] = [str(base + int(r() * size)) if c.required or r() >= empty else ""
                                   for _ in range(n)]
            fixed.update(V.person_columns(spec, rng, n, hi))
            if spec.is_dimension and spec.extract == "Patients":
                for c in nhi_cols:
                    fixed[c] = V.unique_nhis(rng, n, nhi_taken)
            ctx = V.Ctx(rng=rng, n=n, practice=pr, anchor=anchor, ins=ins, upd_lo=lo, hi=hi, loaded=loaded,
                        fixed=fixed)
            cols = V.build_columns(spec, ctx)
            text = TERM.join(map(SEP.join, zip(*cols))) + TERM
            emit(text.encode(encoding))
            done += n
    finally:
        if close and fh is not None:
            fh.close()
    return StreamedFile(name=name, path=path, rows=n_rows, bytes=total, sha256=hasher.hexdigest(),
                        seconds=time.perf_counter() - t0)


__all__ = ["SEP", "TERM", "GeneratedFile", "StreamedFile", "file_name", "encode_rows", "manifest",
           "manifest_json", "write_folder", "write_s3", "generate_extract", "MANIFEST_NAME"]
