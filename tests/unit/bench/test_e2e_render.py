"""bench.e2e --render: the markdown and plot written again from a results JSON, nothing run."""

from __future__ import annotations

import json

from bench import e2e
from tests.unit.bench.test_report import _report


def test_render_rewrites_the_markdown_from_the_json_and_names_both_commits(tmp_path, monkeypatch) -> None:
    plotted = []  # matplotlib is a bench extra (test_report covers the plot where it is installed)
    monkeypatch.setattr(e2e.R, "plot", lambda report, path: plotted.append(path))
    report = _report()
    (tmp_path / "e2e.json").write_text(json.dumps(report))
    (tmp_path / "e2e.md").write_text("stale\n")

    assert e2e.main(["--render", "--out", str(tmp_path)]) == 0

    text = (tmp_path / "e2e.md").read_text()
    assert "stale" not in text
    assert "commit `abc` (this page rendered from the JSON at `" in text  # the run's commit stays
    assert "| 1M | 16.8 | 8.4 | 0.478x |" in text  # the report code of this commit ran
    assert plotted == [tmp_path / "e2e.png"]
    rendered = json.loads((tmp_path / "e2e.json").read_text())
    assert rendered["sizes"] == report["sizes"]  # the measurements are untouched
    assert rendered["meta"]["commit"] == "abc"
