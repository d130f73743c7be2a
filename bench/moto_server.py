"""The benchmark's moto S3 server: moto's own server, with one change to what it costs to list.

moto 5's ListObjectVersions deep-copies every stored object version before it filters and pages the
listing (moto/s3/models.py, `list_object_versions`: `copy.deepcopy(version_key)`), and a key's deepcopy
is a pickle round trip that reads its whole body and writes it into a new temporary file. Listing a
bucket holding one 1.7 GB file took 11 s and 4 GB of memory: the benchmark's "plan" stage measured moto,
not the pipeline (real S3 lists versions in milliseconds whatever their size). Worse, the copy has no
ETag yet when the object was never asked for one, so every listing also computed the MD5 of every
body. Here a version's copy shares its body instead (the listing only reads the metadata) and the
ETag is computed once on the original and kept, so planning measures discovery, the ledger and
dispatch. Everything else is moto's server as `moto_server` runs it.

    python -m bench.moto_server -H 127.0.0.1 -p 5000
"""

from __future__ import annotations

import sys
from typing import Any


class _SharedBody:
    """A listed copy's view of the original's body: reads pass through, closing is the original's job."""

    def __init__(self, buffer: Any) -> None:
        self._buffer = buffer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._buffer, name)

    def close(self) -> None:
        pass


def _listing_copy(self, memo: dict) -> Any:
    self.etag  # noqa: B018  (computed once and kept on the original: the listing reports it)
    # Not copy.copy: a FakeKey's __getstate__/__setstate__ (pickling) would read and rewrite its body.
    clone = object.__new__(type(self))
    clone.__dict__.update(self.__dict__)
    clone.__dict__["_value_buffer"] = _SharedBody(self.__dict__["_value_buffer"])
    # The copy is thrown away after the listing: its disposal (FakeKey.__del__) must not close what the
    # original still holds, nor warn about it.
    clone.__dict__["multipart"] = None
    clone.__dict__["disposed"] = True
    return clone


def patch() -> None:
    from moto.s3.models import FakeKey

    FakeKey.__deepcopy__ = _listing_copy  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> None:
    patch()
    from moto.server import main as moto_main

    moto_main(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
