"""Parse Indici extract file names (S3 keys).

Two forms are documented (see ``indici/README.md``)::

    <PerOrgID>_<PracticeID>_<ExtractType>_<DateFrom>_<DateTo>_<DateExtracted>[.csv|.CSV]
    685146_535_Patients_202508180544_202508190544_2508190850.csv

    <PerOrgID><PracticeID><ExtractType><DateFrom><DateTo><DateExtracted>          (compact form)
    685146545Appointments2025081805442025081905442508190850

* DateFrom / DateTo are ``yyyyMMddHHmm``, DateExtracted is ``yyMMddHHmm`` (20yy), all NZ local time; they are
  returned as naive datetimes (the caller attaches Pacific/Auckland where it needs to).
* The key may carry a folder prefix: ``/`` folders and Windows paths written into the key
  (``C:\\Jobs\\indici_export\\...\\685146_535_...csv``); both separators are stripped.
* The extension is ``.csv`` in any case, or absent; any other extension is unparseable.
* The ExtractType token is matched case-insensitively against ``tokens`` (lower-cased token -> extract name),
  longest token first, and must fill the whole space between its neighbours (so ``Appointment`` never
  matches the start of ``AppointmentMedications``).
* In the compact form the digits before the token are PerOrgID and PracticeID run together.  They are split
  only when they start with exactly one of ``known_per_org_ids`` and a non-empty practice id remains;
  otherwise (unknown, or ambiguous because several known ids are prefixes) both are None and the file's own
  PerOrgID/PracticeID columns decide.

A key that does not parse raises :class:`UnparseableKey` with a reason a person can act on; it never raises
anything else (discovery reports it and goes on with the other keys).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Collection, Mapping

__all__ = ["ParsedName", "UnparseableKey", "parse_key", "base_name"]


@dataclass(frozen=True)
class ParsedName:
    key: str                  # the full S3 key as given
    file_name: str            # base name after stripping '/' and '\' folder prefixes (extension kept)
    extract_token: str        # the token as written in the name (e.g. 'NextofKin')
    extract: str              # the extract it maps to (the value in ``tokens``, e.g. 'NextOfKin')
    per_org_id: int | None
    practice_id: int | None
    date_from: datetime       # naive, NZ local (yyyyMMddHHmm)
    date_to: datetime         # naive, NZ local
    date_extracted: datetime  # naive, NZ local, from yyMMddHHmm (2508190850 -> 2025-08-19 08:50)
    compact: bool             # True for the no-separator form


class UnparseableKey(ValueError):
    """A key that is not an Indici extract file name.  ``key`` is the key, ``reason`` says why."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key!r}: {reason}")
        self.key = key
        self.reason = reason

    def __reduce__(self):
        return (UnparseableKey, (self.key, self.reason))


_FOLDER_SPLIT = re.compile(r"[/\\]")
_EXT = re.compile(r"\.csv$", re.IGNORECASE)
_LEADING_DIGITS = re.compile(r"[0-9]*")
_TRAILING_DIGITS = re.compile(r"[0-9]*$")


def _is_digits(s: str) -> bool:
    return s.isascii() and s.isdigit()


def base_name(key: str) -> str:
    """The part of ``key`` after the last ``/`` or ``\\`` (empty for a folder-like key)."""
    return _FOLDER_SPLIT.split(key)[-1]


@lru_cache(maxsize=64)
def _patterns(token_keys: tuple[str, ...]) -> tuple[re.Pattern, re.Pattern]:
    alternation = "|".join(re.escape(t) for t in sorted(token_keys, key=lambda t: (-len(t), t)))
    underscore = re.compile(
        rf"(?P<org>\d+)_(?P<prac>\d+)_(?P<tok>{alternation})_(?P<df>\d{{12}})_(?P<dt>\d{{12}})_(?P<dx>\d{{10}})",
        re.IGNORECASE | re.ASCII,
    )
    compact = re.compile(
        rf"(?P<ids>\d*)(?P<tok>{alternation})(?P<df>\d{{12}})(?P<dt>\d{{12}})(?P<dx>\d{{10}})",
        re.IGNORECASE | re.ASCII,
    )
    return underscore, compact


def _dt(label: str, digits: str, *, short_year: bool = False) -> datetime:
    try:
        if short_year:
            y, rest = 2000 + int(digits[0:2]), digits[2:]
        else:
            y, rest = int(digits[0:4]), digits[4:]
        return datetime(y, int(rest[0:2]), int(rest[2:4]), int(rest[4:6]), int(rest[6:8]))
    except ValueError as e:
        fmt = "yyMMddHHmm" if short_year else "yyyyMMddHHmm"
        raise ValueError(f"{label} '{digits}' is not a valid {fmt} date ({e})") from None


def _split_ids(digits: str, known_per_org_ids: Collection[int]) -> tuple[int | None, int | None]:
    if not digits:
        return None, None
    candidates = {str(k) for k in known_per_org_ids}
    splits = [k for k in candidates if digits.startswith(k) and len(digits) > len(k)]
    if len(splits) != 1:
        return None, None  # unknown organisation, or ambiguous: the file's own columns decide
    org = splits[0]
    return int(org), int(digits[len(org):])


def _diagnose(stem: str, tokens: Mapping[str, str]) -> str:
    """Why ``stem`` (a base name without .csv) matches neither form: a reason a person can act on."""
    if "." in stem:
        return f"unexpected extension '{stem[stem.index('.'):]}' (expected .csv or none)"
    if "_" in stem:
        parts = stem.split("_")
        if len(parts) != 6:
            return (f"expected 6 '_'-separated parts PerOrgID_PracticeID_ExtractType_DateFrom_DateTo_"
                    f"DateExtracted, found {len(parts)}")
        org, prac, tok, df, dt, dx = parts
        if not _is_digits(org):
            return f"PerOrgID '{org}' is not a number"
        if not _is_digits(prac):
            return f"PracticeID '{prac}' is not a number"
        if tok.lower() not in tokens:
            return f"no extract type token: '{tok}' is not a known extract type"
        for label, value, n in (("DateFrom", df, 12), ("DateTo", dt, 12), ("DateExtracted", dx, 10)):
            if not (_is_digits(value) and len(value) == n):
                fmt = "yyMMddHHmm" if n == 10 else "yyyyMMddHHmm"
                return f"{label} '{value}' is not {n} digits ({fmt})"
        return "not a recognised Indici file name"  # pragma: no cover - the pattern would have matched
    # compact form: find the earliest (then longest) known token anywhere in the name
    low = stem.lower()
    hit = None
    for t in tokens:
        i = low.find(t)
        if i >= 0 and (hit is None or (i, -len(t)) < (hit[0], -len(hit[1]))):
            hit = (i, t)
    if hit is None:
        lead = _LEADING_DIGITS.match(stem).group()
        trail = _TRAILING_DIGITS.search(stem).group()
        middle = stem[len(lead):len(stem) - len(trail)] if len(lead) < len(stem) else ""
        if not middle:
            return "no extract type token"
        return f"no extract type token: '{middle}' is not a known extract type"
    i, t = hit
    lead, tok, rest = stem[:i], stem[i:i + len(t)], stem[i + len(t):]
    if lead and not _is_digits(lead):
        return f"unexpected '{lead}' before the extract type '{tok}' (expected PerOrgID and PracticeID digits)"
    digits = _LEADING_DIGITS.match(rest).group()
    expected = ("expected 34 digits after the extract type (DateFrom yyyyMMddHHmm, DateTo yyyyMMddHHmm, "
                "DateExtracted yyMMddHHmm)")
    if digits != rest:
        return f"{expected}, found {len(digits)} digits followed by '{rest[len(digits):]}'"
    return f"{expected}, found {len(digits)}"


def parse_key(key: str, tokens: Mapping[str, str], known_per_org_ids: Collection[int] = ()) -> ParsedName:
    """Parse an S3 key into its parts, or raise :class:`UnparseableKey`.

    ``tokens`` maps file tokens (matched case-insensitively; keys are lower-cased here anyway) to extract
    names.  ``known_per_org_ids`` are the PerOrgIDs used to split the compact form's leading digits.
    """
    if not isinstance(key, str):
        raise UnparseableKey(repr(key), "key is not a string")
    file_name = base_name(key)
    if not file_name:
        raise UnparseableKey(key, "folder-like key (ends with '/' or '\\'), not a file")
    if not tokens:
        raise UnparseableKey(key, "no extract type tokens configured")
    lowered = {str(k).lower(): v for k, v in tokens.items()}
    stem = _EXT.sub("", file_name)
    if not stem:
        raise UnparseableKey(key, "empty file name")
    underscore, compact_re = _patterns(tuple(sorted(lowered)))

    m = underscore.fullmatch(stem)
    compact = False
    if m is None:
        m = compact_re.fullmatch(stem)
        compact = m is not None
    if m is None:
        raise UnparseableKey(key, _diagnose(stem, lowered))

    tok = m.group("tok")
    try:
        date_from = _dt("DateFrom", m.group("df"))
        date_to = _dt("DateTo", m.group("dt"))
        date_extracted = _dt("DateExtracted", m.group("dx"), short_year=True)
    except ValueError as e:
        raise UnparseableKey(key, str(e))
    if date_from > date_to:
        raise UnparseableKey(key, f"DateFrom {date_from:%Y-%m-%d %H:%M} is after DateTo {date_to:%Y-%m-%d %H:%M}")

    if compact:
        per_org_id, practice_id = _split_ids(m.group("ids"), known_per_org_ids)
    else:
        per_org_id, practice_id = int(m.group("org")), int(m.group("prac"))

    return ParsedName(
        key=key,
        file_name=file_name,
        extract_token=tok,
        extract=lowered[tok.lower()],
        per_org_id=per_org_id,
        practice_id=practice_id,
        date_from=date_from,
        date_to=date_to,
        date_extracted=date_extracted,
        compact=compact,
    )
