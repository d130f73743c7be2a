"""Streaming reader for Indici extract files.

The format (see the source documentation, ``indici/README.md``):

* encoding UTF-16LE with or without a byte-order mark; UTF-8 with or without BOM is also accepted
  (detected, see :func:`detect_encoding`); a UTF-16BE BOM is honoured too;
* field separator ``|^^|``, row terminator ``|~~|`` (also after the last row);
* no header, no quoting, no escaping: fields may contain commas, tabs, backslashes, CR, LF and quotes;
* after the last ``|~~|`` only whitespace (space, tab, CR, LF) may follow; anything else is a truncated row.

Speed: the reader never looks at single characters in Python.  It decodes large chunks with an
incremental decoder and works on whole chunks with ``replace`` / ``split`` / ``count`` (all C loops);
Python code runs once per chunk, and per row only through C-level ``map`` calls.  ``rows()`` works on the
decoded str; the COPY path (``copy_bytes`` / ``copy_blocks``) re-encodes each decoded chunk to UTF-8 and
works on bytes, which is faster than on (usually 2-byte-wide, because of macrons) str and is what COPY
sends anyway.  The SHA-256 covers every raw byte and is computed in the same pass.  Memory: one chunk
(``chunk_chars`` characters) plus the partial row carried to the next chunk; a single row longer than
``max_row_chars`` is an error rather than unbounded growth.  Feed it large source chunks (1-8 MiB: e.g.
``body.iter_chunks(2 << 20)``; boto3's default of 1 KiB works but costs a Python step per KiB).

Row numbers are 1-based in file order.  A file with zero rows (empty, or only whitespace) is valid:
``rows_read == 0``.  An empty file reports ``encoding == 'utf-8'`` and ``bom is False`` (no evidence of
anything else).

Errors are raised as :class:`IndiciFormatError` in file order: rows before the failing one have already
been produced (yielded) when the error is raised, so a caller must treat the whole file as failed
(e.g. roll back its transaction).  ``copy_blocks`` validates every row of a block before yielding it.
"""
from __future__ import annotations

import codecs
import hashlib
import re
from itertools import repeat
from typing import BinaryIO, Iterable, Iterator, Sequence

__all__ = [
    "SEP",
    "TERM",
    "DEFAULT_CHUNK_CHARS",
    "DEFAULT_READ_SIZE",
    "DEFAULT_MAX_ROW_CHARS",
    "IndiciFormatError",
    "IndiciReader",
    "detect_encoding",
    "encode_rows",
    "escape_copy_text",
    "iter_file_chunks",
]

SEP = "|^^|"
TERM = "|~~|"

#: characters decoded per processing step (1 Mi chars = 2 MiB of UTF-16LE bytes)
DEFAULT_CHUNK_CHARS = 1 << 20
#: bytes per read for :func:`iter_file_chunks`
DEFAULT_READ_SIZE = 2 << 20
#: a partial row longer than this is an error (str characters in rows(); UTF-8 bytes after COPY escaping in
#: copy_bytes()/copy_blocks())
DEFAULT_MAX_ROW_CHARS = 64 << 20

_HEAD_SAMPLE = 1 << 16  # bytes detect_encoding looks at
_HEAD_MIN = 1 << 12  # the first block handed to detect_encoding is at least this long (or the whole file)
_WHITESPACE = " \t\r\n"
# an escaped (COPY text format) string that is whitespace-only in the original consists only of these tokens
_ESCAPED_WHITESPACE_B = re.compile(rb"(?: |\\[tnr])*")


class IndiciFormatError(ValueError):
    """The byte stream breaks the Indici file format.

    Attributes:
        kind: one of :attr:`KINDS`:
            ``'field_count'``  a row has another number of fields than the extract documents
                               (``expected`` and ``found`` are set);
            ``'decode'``       bytes that are not valid in the detected encoding: invalid UTF-8, a lone
                               or reversed UTF-16 surrogate, an odd trailing byte (``byte_offset`` set);
            ``'nul'``          a NUL character (U+0000) in the decoded text: Postgres text cannot store it
                               (``field_number`` set);
            ``'truncated'``    something other than whitespace after the last ``|~~|``;
            ``'row_too_long'`` a row (or a file without terminators) longer than ``max_row_chars``.
            There is no ``'empty'`` kind: a file with zero rows is valid.
        row_number: 1-based row in file order where it happened (the row the bad data belongs to; for
            ``truncated`` the number the unterminated row would have had).  None if not row-specific.
        detail: a human message naming the row number (and the counts, byte offset, ... where known).
            It never quotes field values (they may be patient data).
    """

    KINDS = frozenset({"field_count", "decode", "nul", "truncated", "row_too_long"})

    def __init__(
        self,
        kind: str,
        row_number: int | None,
        detail: str,
        *,
        expected: int | None = None,
        found: int | None = None,
        byte_offset: int | None = None,
        field_number: int | None = None,
    ) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"unknown IndiciFormatError kind {kind!r}")
        super().__init__(detail)
        self.kind = kind
        self.row_number = row_number
        self.detail = detail
        self.expected = expected
        self.found = found
        self.byte_offset = byte_offset
        self.field_number = field_number

    def __reduce__(self):  # keep it picklable (Celery result backends, multiprocessing)
        return (
            _rebuild_error,
            (self.kind, self.row_number, self.detail, self.expected, self.found, self.byte_offset,
             self.field_number),
        )


def _rebuild_error(kind, row_number, detail, expected, found, byte_offset, field_number):
    return IndiciFormatError(kind, row_number, detail, expected=expected, found=found,
                             byte_offset=byte_offset, field_number=field_number)


class _DecodeFailure(Exception):
    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason


def detect_encoding(head: bytes) -> tuple[str, int]:
    """Return ``(codec name, BOM length in bytes)`` for the first bytes of a file.

    BOMs: ``EF BB BF`` -> ('utf-8', 3), ``FF FE`` -> ('utf-16-le', 2), ``FE FF`` -> ('utf-16-be', 2).
    Without a BOM: if NUL bytes at odd offsets outnumber those at even offsets and make up at least a
    quarter of the 2-byte units of the sample (ASCII-heavy UTF-16LE text has one at almost every odd
    offset) -> ('utf-16-le', 0); otherwise ('utf-8', 0) (including an empty head).  A stray NUL in UTF-8
    text therefore stays UTF-8 and is reported as a ``'nul'`` error rather than as garbled UTF-16.
    """
    head = bytes(head[:_HEAD_SAMPLE])
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8", 3
    if head.startswith(codecs.BOM_UTF16_LE):
        return "utf-16-le", 2
    if head.startswith(codecs.BOM_UTF16_BE):
        return "utf-16-be", 2
    units = len(head) // 2
    if units:
        odd = head[1::2].count(0)
        even = head[0::2].count(0)
        if odd > even and odd * 4 >= units:
            return "utf-16-le", 0
    return "utf-8", 0


def escape_copy_text(text: str) -> str:
    """Escape text for Postgres COPY text format: backslash, tab, LF, CR (nothing else)."""
    return (
        text.replace("\\", "\\\\")
        .replace("\t", "\\t")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
    )


def iter_file_chunks(path, size: int = DEFAULT_READ_SIZE) -> Iterator[bytes]:
    """Yield the bytes of a local file in chunks of ``size`` bytes (the last one may be shorter)."""
    if size <= 0:
        raise ValueError("size must be positive")
    with open(path, "rb") as fh:
        yield from _iter_stream(fh, size)


def _iter_stream(fh: BinaryIO, size: int) -> Iterator[bytes]:
    read = fh.read
    while True:
        chunk = read(size)
        if not chunk:
            return
        yield chunk


def encode_rows(rows: Iterable[Sequence[str]], encoding: str = "utf-16-le", bom: bool = False) -> bytes:
    """Build the bytes of an Indici file from rows (the inverse of :meth:`IndiciReader.rows`).

    ``encoding`` is any codec name ('utf-16-le', 'utf-8', 'utf-16-be', ...); ``bom`` prepends the
    encoding's byte-order mark.  Raises ValueError for a row that cannot be written unambiguously
    (an empty row, or fields containing/abutting separators so that reading back would differ).
    """
    rows = [list(r) for r in rows]
    for i, r in enumerate(rows, 1):
        if not r:
            raise ValueError(f"row {i} has no fields")
    text = "".join(SEP.join(r) + TERM for r in rows)
    parts = text.split(TERM)
    parts.pop()
    if len(parts) != len(rows) or any(p.split(SEP) != r for p, r in zip(parts, rows)):
        raise ValueError("rows contain '|^^|'/'|~~|' (or parts of them at field edges): not representable")
    data = text.encode(encoding)
    if bom:
        data = "\ufeff".encode(encoding) + data
    return data


class IndiciReader:
    """Streams one Indici file: decodes, splits and validates it in a single pass.

    ``chunks`` is any iterable of bytes-like objects with arbitrary boundaries (an S3 body's
    ``iter_chunks()``, :func:`iter_file_chunks`, a list of 1-byte pieces in tests).  Small pieces are
    gathered until about ``chunk_chars`` characters' worth of bytes before decoding.

    Use exactly one of :meth:`rows`, :meth:`copy_blocks` or :meth:`copy_bytes`, once (a second call raises
    RuntimeError).  After that iteration has finished (was exhausted without error) these are final:

    * ``encoding``: codec used ('utf-16-le', 'utf-8', 'utf-16-be'); set as soon as the first bytes arrive
    * ``bom``: whether a byte-order mark was present (it is not part of any row)
    * ``sha256``: hex SHA-256 of every raw byte read, BOM included (None until the stream is exhausted,
      and always None when ``hashed`` is false: a caller that hashed the same bytes already, as the
      landing's spool does, saves a second SHA-256 pass, about 1.3 s of CPU per 1.7 GB file)
    * ``bytes_read``: raw bytes read (counts up while reading)
    * ``rows_read``: complete, valid rows produced (counts up while reading)

    If iteration stops early (an error, or the consumer stops) ``sha256`` stays None.
    ``field_count`` is the documented number of fields of the extract (>= 1).
    """

    def __init__(
        self,
        chunks: Iterable[bytes],
        field_count: int,
        chunk_chars: int = DEFAULT_CHUNK_CHARS,
        max_row_chars: int = DEFAULT_MAX_ROW_CHARS,
        hashed: bool = True,
    ) -> None:
        if field_count < 1:
            raise ValueError("field_count must be >= 1")
        if chunk_chars < 1:
            raise ValueError("chunk_chars must be >= 1")
        self._chunks = chunks
        self.field_count = field_count
        self.chunk_chars = chunk_chars
        self.max_row_chars = max_row_chars
        self.hashed = hashed
        self.encoding: str | None = None
        self.bom: bool = False
        self.sha256: str | None = None
        self.bytes_read = 0
        self.rows_read = 0
        self._started = False
        # the partial row carried between chunks, as a list of pieces (escaped in copy mode)
        self._pend: list = []
        self._pend_len = 0
        self._pend_tail: str | bytes = ""
        self._term: str | bytes = TERM
        self._sep: str | bytes = SEP
        self._empty: str | bytes = ""

    # ------------------------------------------------------------------ bytes -> text
    def _byte_blocks(self, hasher) -> Iterator[bytes]:
        # until the encoding is known: enough bytes for a whole BOM and a fair sample for the heuristic
        target = max(self.chunk_chars * 2, _HEAD_MIN)
        buf = bytearray()
        for chunk in self._chunks:
            if not chunk:
                continue
            if hasher is not None:
                hasher.update(chunk)
            self.bytes_read += len(chunk)
            if self.encoding is not None:
                target = self.chunk_chars * (1 if self.encoding == "utf-8" else 2)
            if not buf and len(chunk) >= target:
                yield chunk
                continue
            buf += chunk
            if len(buf) >= target:
                yield bytes(buf)
                buf = bytearray()
        if buf:
            yield bytes(buf)

    def _decoded(self) -> Iterator[str]:
        """Yield decoded text.  On a decode error: yield the valid text before it, then raise _DecodeFailure."""
        hasher = hashlib.sha256() if self.hashed else None
        decoder = None
        bom_len = 0
        fed = 0  # bytes handed to the decoder (BOM excluded)
        enc = "utf-8"
        for block in self._byte_blocks(hasher):
            if decoder is None:
                enc, bom_len = detect_encoding(block[:_HEAD_SAMPLE])
                self.encoding = enc
                self.bom = bom_len > 0
                decoder = codecs.getincrementaldecoder(enc)(errors="strict")
                # the first block may be longer than a step (it holds the detection head): decode it in steps
                step = self.chunk_chars * (1 if enc == "utf-8" else 2)
                view = memoryview(block)
                pieces = [view[i:i + step] for i in range(bom_len, len(block), step)]
            else:
                pieces = [block]
            for piece in pieces:
                buffered = len(decoder.getstate()[0])
                try:
                    text = decoder.decode(piece, False)
                except UnicodeDecodeError as e:
                    yield from self._decode_failure(e, enc, bom_len + fed - buffered)
                fed += len(piece)
                if text:
                    yield text
        if decoder is None:  # empty input
            self.encoding, self.bom = detect_encoding(b"")[0], False
        else:
            buffered = len(decoder.getstate()[0])
            try:
                text = decoder.decode(b"", True)
            except UnicodeDecodeError as e:
                yield from self._decode_failure(e, enc, bom_len + fed - buffered)
            if text:
                yield text
        if hasher is not None:
            self.sha256 = hasher.hexdigest()

    @staticmethod
    def _decode_failure(e: UnicodeDecodeError, enc: str, base: int) -> Iterator[str]:
        # e.object is the decoder's buffered bytes + this call's input; base is its offset in the file
        try:
            before = codecs.decode(bytes(e.object[: e.start]), enc, "strict")
        except UnicodeDecodeError:  # pragma: no cover - the prefix before the first error is valid
            before = ""
        if before:
            yield before
        raise _DecodeFailure(base + e.start, e.reason)

    # ------------------------------------------------------------------ shared splitting
    # The carried partial row and the splitting work on str (rows) or on UTF-8 bytes (COPY output);
    # ``self._term`` / ``self._sep`` / ``self._empty`` hold the constants of the type in use.
    def _start(self, kind: type) -> None:
        if self._started:
            raise RuntimeError("an IndiciReader can be iterated only once")
        self._started = True
        if kind is bytes:
            self._term, self._sep, self._empty = TERM.encode(), SEP.encode(), b""
        else:
            self._term, self._sep, self._empty = TERM, SEP, ""
        self._pend_tail = self._empty

    def _take(self, text):
        """Join the carried partial row with ``text``; None if there cannot be a terminator yet."""
        pend = self._pend
        if not pend:
            return text
        term = self._term
        if self._pend_len > self.chunk_chars and term not in text and term not in self._pend_tail + text[:3]:
            # a very long row spanning many chunks: keep the pieces instead of re-joining every time
            pend.append(text)
            self._pend_len += len(text)
            self._pend_tail = (self._pend_tail + text)[-3:]
            self._check_row_length()
            return None
        pend.append(text)
        return self._empty.join(pend)

    def _set_carry(self, tail) -> None:
        self._pend = [tail] if tail else []
        self._pend_len = len(tail)
        self._pend_tail = tail[-3:]
        self._check_row_length()

    def _check_row_length(self) -> None:
        if self._pend_len > self.max_row_chars:
            row = self.rows_read + 1
            raise IndiciFormatError(
                "row_too_long", row,
                f"row {row}: more than {self.max_row_chars} characters without a '|~~|' terminator",
            )

    def _field_count_error(self, row: int, found: int) -> IndiciFormatError:
        return IndiciFormatError(
            "field_count", row,
            f"row {row}: expected {self.field_count} fields, found {found}",
            expected=self.field_count, found=found,
        )

    def _nul_error(self) -> IndiciFormatError:
        row = self.rows_read + 1
        field = self._empty.join(self._pend).count(self._sep) + 1
        return IndiciFormatError(
            "nul", row,
            f"row {row}, field {field}: NUL character (U+0000) in the data; Postgres text cannot store it",
            field_number=field,
        )

    def _decode_error(self, f: _DecodeFailure) -> IndiciFormatError:
        row = self.rows_read + 1
        return IndiciFormatError(
            "decode", row,
            f"row {row} (approximately), byte offset {f.offset}: bytes are not valid {self.encoding} "
            f"({f.reason})",
            byte_offset=f.offset,
        )

    def _finish(self) -> None:
        if not self._pend:
            return
        tail = self._empty.join(self._pend)
        if isinstance(tail, bytes):  # COPY-escaped
            ok = _ESCAPED_WHITESPACE_B.fullmatch(tail) is not None
        else:
            ok = not tail.strip(_WHITESPACE)
        if not ok:
            row = self.rows_read + 1
            raise IndiciFormatError(
                "truncated", row,
                f"row {row}: data other than whitespace after the last '|~~|' terminator "
                f"(truncated file or missing terminator)",
            )

    # ------------------------------------------------------------------ public iteration
    def rows(self) -> Iterator[list[str]]:
        """Yield each row's fields as ``str``, exactly as in the file (no trimming, no NULL mapping)."""
        self._start(str)
        fc = self.field_count
        try:
            for text in self._decoded():
                nul = text.find("\x00")
                if nul >= 0:
                    text = text[:nul]
                buf = self._take(text)
                if buf is not None:
                    parts = buf.split(TERM)
                    self._set_carry(parts.pop())
                    for part in parts:
                        fields = part.split(SEP)
                        if len(fields) != fc:
                            raise self._field_count_error(self.rows_read + 1, len(fields))
                        self.rows_read += 1
                        yield fields
                if nul >= 0:
                    raise self._nul_error()
        except _DecodeFailure as f:
            raise self._decode_error(f) from None
        self._finish()

    def copy_blocks(self, prefix: str = "") -> Iterator[str]:
        """Yield Postgres COPY text-format data, many complete lines per string.

        Each row becomes ``f"{prefix}{row_number}\\t{field_1}\\t...\\t{field_n}\\n"`` with every field
        escaped for COPY text format (backslash, tab, LF, CR; nothing else).  ``prefix`` is a constant the
        caller has already escaped (empty, or ending with a tab).  An empty field is an empty string, never
        ``\\N``.  Every row of a block is validated before the block is yielded.  (Implemented as
        :meth:`copy_bytes` decoded; prefer ``copy_bytes`` when the consumer takes bytes, e.g. psycopg's
        ``Copy.write``, which would otherwise encode the str again.)
        """
        for block in self.copy_bytes(prefix):
            yield block.decode("utf-8")

    def copy_bytes(self, prefix: str = "") -> Iterator[bytes]:
        """Like :meth:`copy_blocks`, but yields the lines UTF-8 encoded (for ``COPY ... FROM STDIN`` with
        ``client_encoding`` UTF8).  The work is done on UTF-8 bytes, which is faster than on str: the
        ASCII delimiters and escapes cannot occur inside a multi-byte UTF-8 sequence."""
        self._start(bytes)
        fc = self.field_count
        want = {fc - 1}
        render = (prefix.replace("%", "%%") + "%d\t%s\n").encode("utf-8").__mod__
        bterm, bsep = self._term, self._sep
        try:
            for text in self._decoded():
                nul = text.find("\x00")
                if nul >= 0:
                    text = text[:nul]
                # escape the whole chunk at once: escaping never touches '|', '^' or '~'
                data = (
                    text.encode("utf-8")
                    .replace(b"\\", b"\\\\")
                    .replace(b"\t", b"\\t")
                    .replace(b"\n", b"\\n")
                    .replace(b"\r", b"\\r")
                )
                buf = self._take(data)
                if buf is not None:
                    # escaped data has no raw LF / tab: after these replaces LF ends a row and tab separates
                    # fields.  Terminators are replaced first, exactly as rows() splits on them first.
                    body = buf.replace(bterm, b"\n")
                    cut = body.rfind(b"\n")
                    if cut < 0:
                        self._set_carry(buf)
                    else:
                        self._set_carry(body[cut + 1:])  # holds no terminator: still the original bytes
                        lines = body.replace(bsep, b"\t").split(b"\n")
                        lines.pop()
                        start = self.rows_read + 1
                        if set(map(bytes.count, lines, repeat(b"\t"))) != want:
                            for i, line in enumerate(lines):
                                if line.count(b"\t") != fc - 1:
                                    if i:  # rows before the offender are valid: emit them first (file order)
                                        self.rows_read += i
                                        yield b"".join(map(render, zip(range(start, start + i), lines)))
                                    raise self._field_count_error(start + i, line.count(b"\t") + 1)
                        self.rows_read += len(lines)
                        yield b"".join(map(render, zip(range(start, start + len(lines)), lines)))
                if nul >= 0:
                    raise self._nul_error()
        except _DecodeFailure as f:
            raise self._decode_error(f) from None
        self._finish()
