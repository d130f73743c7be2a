"""Generator of real-format Indici extracts (synthetic data, contract-driven).

    from worker.synth import generate
    batches = generate("out/", seed=7, patients=500, practices=[(685146, 535), (685146, 536)],
                       deltas=2, faults=["bad_timestamp", "duplicate_key", "nasty_text"])

Modules: ``values`` (value generators, NHI check), ``population`` (consistent data per practice),
``batches`` (full + weekly deltas), ``faults`` (planted, recorded faults), ``writer`` (bytes, names,
folder/S3 output, streaming one big extract), ``command`` (the ``indici-ingest synth`` arguments).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from worker.synth.batches import DEFAULT_PRACTICES, DEFAULT_START, Batch, all_files, build_series
from worker.synth.faults import FAULT_KINDS, FaultPlan, InjectedFault
from worker.synth.values import nhi_is_valid
from worker.synth.writer import GeneratedFile, generate_extract, manifest, write_folder, write_s3


@dataclass(frozen=True)
class S3Target:
    """Where :func:`generate` puts the files in S3 (``client`` wins over ``endpoint_url``/``region``)."""

    bucket: str
    prefix: str = ""
    client: Any = None
    endpoint_url: str | None = None
    region: str | None = None
    manifest_key: str | None = None

    def s3_client(self) -> Any:
        if self.client is not None:
            return self.client
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.region)


def generate(
    out: str | Path | None = None,
    *,
    seed: int = 1,
    patients: int = 100,
    practices: Sequence[tuple[int, int]] = DEFAULT_PRACTICES,
    deltas: int = 2,
    faults: FaultPlan | str | Iterable[str] | Mapping[str, int] | None = None,
    s3: S3Target | Mapping[str, Any] | None = None,
    start: datetime = DEFAULT_START,
    bom: bool = False,
    encoding: str = "utf-16-le",
    extracts: Iterable[str] | None = None,
    specs: Mapping[str, Any] | None = None,
    vary_tokens: bool = False,
) -> list[Batch]:
    """Build the series (full batch + ``deltas`` deltas) and write it to ``out`` and/or S3.

    ``out``: a folder (files + ``manifest.json``). ``s3``: an :class:`S3Target` or a mapping with its
    fields. Returns the batches (each file with its rows, bytes and planted faults).
    """
    batches = build_series(seed, patients, practices, deltas, start, faults=faults, specs=specs,
                           extracts=extracts, encoding=encoding, bom=bom, vary_tokens=vary_tokens)
    files = all_files(batches)
    if out is not None:
        write_folder(files, out)
    if s3 is not None:
        target = s3 if isinstance(s3, S3Target) else S3Target(**dict(s3))
        write_s3(files, target.bucket, target.prefix, target.s3_client(), manifest_key=target.manifest_key)
    return batches


def add_synth_arguments(parser):  # noqa: ANN001 - argparse.ArgumentParser
    from worker.synth.command import add_synth_arguments as _add

    return _add(parser)


def run_synth(args) -> int:  # noqa: ANN001 - argparse.Namespace
    from worker.synth.command import run_synth as _run

    return _run(args)


__all__ = [
    "generate", "build_series", "generate_extract", "write_folder", "write_s3", "manifest", "all_files",
    "Batch", "GeneratedFile", "InjectedFault", "FaultPlan", "FAULT_KINDS", "S3Target", "nhi_is_valid",
    "DEFAULT_PRACTICES", "DEFAULT_START", "add_synth_arguments", "run_synth",
]
