"""Discovery: list object versions under the prefix, parse their names, select what a run loads.

A key that does not parse is reported (etl.skipped_keys) and never stops discovery of the others.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from contracts.model import ExtractSpec
from contracts.registry import load_all
from worker.io.s3 import ObjectVersion, iter_versions
from worker.pipeline.naming import ParsedName, UnparseableKey, parse_key


@dataclass(frozen=True)
class DiscoveredFile:
    version: ObjectVersion
    name: ParsedName
    spec: ExtractSpec

    @property
    def group(self) -> tuple[str, int | None, int | None]:
        """Files of one extract for one organisation and practice form a series of batches."""
        return (self.spec.extract, self.name.per_org_id, self.name.practice_id)


@dataclass
class Discovery:
    files: list[DiscoveredFile] = field(default_factory=list)
    unparseable: list[tuple[ObjectVersion, str]] = field(default_factory=list)
    # Older versions of keys (not the latest): recorded as `superseded` when their key is taken.
    superseded_versions: list[DiscoveredFile] = field(default_factory=list)


def token_map() -> dict[str, str]:
    return {t.lower(): s.extract for s in load_all().values() for t in s.file_tokens}


def classify(versions: Iterable[ObjectVersion], known_per_org_ids: Sequence[int] = ()) -> Discovery:
    """Parse every listed version. Only the latest version of a key is a candidate: an older version
    was replaced by the provider, and loading both would give two different rows the same lineage
    order (DateExtracted, DateTo, row number)."""
    specs = load_all()
    tokens = token_map()
    found = Discovery()
    for version in versions:
        if version.key.endswith("/"):
            continue  # a "folder" placeholder, not a file
        try:
            name = parse_key(version.key, tokens, known_per_org_ids)
        except UnparseableKey as exc:
            found.unparseable.append((version, exc.reason))
            continue
        if not version.is_latest:
            found.superseded_versions.append(DiscoveredFile(version, name, specs[name.extract]))
            continue
        found.files.append(DiscoveredFile(version, name, specs[name.extract]))
    found.files.sort(key=lambda f: (f.name.date_extracted, f.spec.extract, f.version.key))
    return found


def discover(client: Any, bucket: str, prefix: str = "", known_per_org_ids: Sequence[int] = ()) -> Discovery:
    return classify(iter_versions(client, bucket, prefix), known_per_org_ids)


def select_nightly(
    files: Iterable[DiscoveredFile],
    loaded_up_to: Mapping[tuple[str, int | None, int | None], datetime],
    extracts: Sequence[str] = (),
) -> list[DiscoveredFile]:
    """The nightly selection, per extract and organisation/practice: the newest batch already loaded and
    every batch after it, or every batch available when none has been loaded yet (a first night).

    Taking only the newest batch would lose the changes of a delta that arrived between two runs (or
    during a night the run failed), and on a first night would load a delta without the full batch it
    applies to (its patients would become inferred members); core does not depend on load order, so
    loading everything is safe and correct. The last loaded batch is selected again so that a
    re-written object (a new version of its key) is seen; the ledger skips the versions already loaded.
    """
    wanted = {e.lower() for e in extracts}
    candidates = [f for f in files if not wanted or f.spec.extract.lower() in wanted]
    chosen = []
    for f in candidates:
        since = loaded_up_to.get(f.group)
        if since is None or f.name.date_extracted >= since:
            chosen.append(f)
    return chosen


def select_range(
    files: Iterable[DiscoveredFile],
    date_from: date,
    date_to: date,
    extracts: Sequence[str] = (),
    key_prefix: str | None = None,
) -> list[DiscoveredFile]:
    """The backfill selection: batches whose DateExtracted (NZ date) falls in [date_from, date_to]."""
    wanted = {e.lower() for e in extracts}
    return [
        f
        for f in files
        if date_from <= f.name.date_extracted.date() <= date_to
        and (not wanted or f.spec.extract.lower() in wanted)
        and (key_prefix is None or f.version.key.startswith(key_prefix))
    ]
