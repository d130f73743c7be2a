"""Bytes, folder output with manifest, the generate() entry point, streaming one big extract, the CLI."""

from __future__ import annotations

import argparse
import io
import json
import re

import pytest

from contracts.registry import load_all
from contracts.types import TYPE_RULES
from worker.io.indici_reader import IndiciReader, iter_file_chunks
from worker.synth import all_files, generate, generate_extract, write_folder
from worker.synth.command import add_synth_arguments, parse_practices, run_synth
from worker.synth.writer import encode_rows, file_name

from .conftest import PRACTICES


def test_encode_rows_format():
    data = encode_rows([["1", "a"], ["2", ""]])
    assert data == "1|^^|a|~~|2|^^||~~|".encode("utf-16-le")
    assert encode_rows([["x"]], bom=True).startswith(b"\xff\xfe")
    assert encode_rows([["x"]], "utf-8", bom=True) == b"\xef\xbb\xbfx|~~|"
    assert encode_rows([]) == b""
    with pytest.raises(ValueError):
        encode_rows([["x"]], "latin-1")


def test_file_name_convention():
    from datetime import datetime

    name = file_name(685146, 535, "Patients", datetime(2025, 8, 18, 5, 44), datetime(2025, 8, 19, 5, 44),
                     datetime(2025, 8, 19, 8, 50))
    assert name == "685146_535_Patients_202508180544_202508190544_2508190850.csv"


def test_write_folder_writes_files_and_a_stable_manifest(tmp_path, faulty_series):
    files = all_files(faulty_series)
    write_folder(files, tmp_path / "a")
    write_folder(files, tmp_path / "b")
    written = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert written == sorted([f.name for f in files] + ["manifest.json"])
    for f in files:
        assert (tmp_path / "a" / f.name).read_bytes() == f.data
    text = (tmp_path / "a" / "manifest.json").read_text(encoding="utf-8")
    assert text == (tmp_path / "b" / "manifest.json").read_text(encoding="utf-8")
    man = json.loads(text)["files"]
    assert set(man) == {f.name for f in files}
    for f in files:
        entry = man[f.name]
        assert entry["extract"] == f.extract and entry["rows"] == len(f.rows)
        assert entry["practice_id"] == f.practice_id and entry["per_org_id"] == f.per_org_id
        assert [(x["kind"], x["row_number"], x["column"], x["value"]) for x in entry["faults"]] == [
            (x.kind, x.row_number, x.column, x.value) for x in f.faults]
    assert sum(len(e["faults"]) for e in man.values()) > 0


def test_files_read_back_from_disk(tmp_path):
    batches = generate(tmp_path, seed=12, patients=15, practices=PRACTICES, deltas=1)
    for f in all_files(batches):
        rows = list(IndiciReader(iter_file_chunks(tmp_path / f.name, size=1001), f.field_count).rows())
        assert rows == f.rows


def test_generate_with_s3_target_uses_put_object(tmp_path):
    class FakeS3:
        def __init__(self):
            self.objects = {}

        def put_object(self, Bucket, Key, Body, **kw):
            self.objects[(Bucket, Key)] = Body

    s3 = FakeS3()
    batches = generate(None, seed=1, patients=5, practices=PRACTICES[:1], deltas=0,
                       s3={"bucket": "bkt", "prefix": "in/", "client": s3})
    files = all_files(batches)
    assert set(s3.objects) == {("bkt", "in/" + f.name) for f in files}
    assert all(s3.objects[("bkt", "in/" + f.name)] == f.data for f in files)


@pytest.mark.parametrize("extract", ["Appointments", "Patients", "PracticeInfo"])
def test_generate_extract_streams_valid_rows(tmp_path, extract):
    spec = load_all()[extract]
    res = generate_extract(spec, 2500, seed=3, out=tmp_path, chunk_rows=700)
    assert res.path == tmp_path / res.name and res.rows == 2500
    assert res.bytes == res.path.stat().st_size
    pats = [re.compile(TYPE_RULES[c.type].pattern) if TYPE_RULES[c.type].pattern else None for c in spec.columns]
    n = 0
    ids = set()
    for row in IndiciReader(iter_file_chunks(res.path), spec.field_count).rows():
        n += 1
        ids.add(tuple(row[spec.column_names.index(k)] for k in spec.natural_key))
        for p, v in zip(pats, row):
            assert p is None or not v.strip() or p.match(v.strip()), v
    assert n == 2500
    if spec.id_column != "practice_id":
        assert len(ids) == 2500
    again = generate_extract(spec, 2500, seed=3, out=io.BytesIO(), chunk_rows=700)
    assert again.sha256 == res.sha256


def test_cli_arguments_and_run(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_synth_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path), "--patients", "5", "--deltas", "1", "--seed", "2",
                              "--practices", "685146:535,685146:536", "--faults", "nasty_text,duplicate_key",
                              "--bom"])
    assert run_synth(args) == 0
    man = json.loads((tmp_path / "manifest.json").read_text())["files"]
    assert len(man) == 2 * 2 * len(load_all())
    assert {x["kind"] for e in man.values() for x in e["faults"]} == {"nasty_text", "duplicate_key"}
    assert all(e["bom"] for e in man.values())
    assert run_synth(parser.parse_args([])) == 2  # no output given
    assert run_synth(parser.parse_args(["--out", str(tmp_path), "--faults", "nope"])) == 2
    bench = parser.parse_args(["--out", str(tmp_path / "big"), "--extract", "Appointments", "--rows", "100"])
    assert run_synth(bench) == 0
    assert len(list((tmp_path / "big").glob("*_Appointments_*.csv"))) == 1


def test_parse_practices():
    assert parse_practices("685146:535, 685146:536") == [(685146, 535), (685146, 536)]
    with pytest.raises(argparse.ArgumentTypeError):
        parse_practices("685146-535")
