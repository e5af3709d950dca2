"""The instruction-count guard (scripts/cpu_guard.py) without valgrind: its
verdict against the baseline, how it reads callgrind's parts, and that the
work it measures still runs on its fixed inputs and stores what the events
say (so that a refactor breaking the script fails here, not only in CI's
last step)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import cpu_guard as guard

BASE = {
    "ingest_event": 400_000.0,
    "report_row": 100_000.0,
    "csv_row": 120_000.0,
    "report_row_stored": 5_000.0,
    "csv_row_stored": 6_000.0,
}


def test_a_figure_more_than_15_percent_over_its_baseline_fails() -> None:
    verdict = guard.compare({**BASE, "report_row": 115_100.0}, BASE)
    assert not verdict.ok
    assert any(line.startswith("report_row") and "FAIL" in line and "1.151x" in line for line in verdict.lines)
    assert sum("FAIL" in line for line in verdict.lines) == 1  # every figure is printed, one fails


def test_figures_within_15_percent_pass_and_a_drop_asks_for_an_update() -> None:
    assert guard.compare({**BASE, "ingest_event": 459_000.0, "csv_row": 105_000.0}, BASE).ok
    dropped = guard.compare({**BASE, "csv_row": 100_000.0}, BASE)
    assert dropped.ok
    assert any("dropped" in line for line in dropped.lines)
    assert "--update" in dropped.lines[-1]


def test_a_figure_without_baseline_or_not_measured_fails() -> None:
    assert not guard.compare(BASE, {**BASE, "csv_row_stored": 0.0}).ok
    assert not guard.compare({"ingest_event": 1.0}, BASE).ok


def test_the_committed_baseline_has_every_figure() -> None:
    saved = json.loads(guard.BASELINE.read_text())
    assert set(saved["figures"]) == set(guard.FIGURES)
    assert all(value > 0 for value in saved["figures"].values())
    assert {"python", "sqlite", "protobuf"} <= set(saved["versions"])


def test_parts_are_read_in_dump_order_and_give_per_item_figures(tmp_path: Path) -> None:
    out = tmp_path / "callgrind.out"
    phases = [1_000, 3_000, 700, 1_900, 800, 2_200, 100, 300, 150, 550]  # the phases of PHASES
    gaps = [7, 8, 9, 10, 11, 12, 13, 14, 15]  # the garbage collection between two
    counts = [5_000, *(ir for pair in zip(phases, [*gaps, 0], strict=True) for ir in pair)][:-1]  # after the setup
    for number, ir in enumerate([*counts, 99], start=1):  # the last part: after the last marker, at exit
        name = out.name + (f".{number}" if number <= len(counts) else "")
        (tmp_path / name).write_text(f"version: 1\ncmd: x\nevents: Ir\nsummary: {ir}\ntotals: {ir}\n")
    assert guard.parts(out) == [*counts, 99]
    figures = guard.figures_from_parts(guard.parts(out))
    small, large = guard.EVENT_SIZES
    assert figures["ingest_event"] == pytest.approx(2_000 / (large - small))
    small, large = guard.ROW_SIZES
    assert figures["report_row"] == pytest.approx(1_200 / (large - small))
    assert figures["csv_row"] == pytest.approx(1_400 / (large - small))
    assert figures["report_row_stored"] == pytest.approx(200 / (large - small))
    assert figures["csv_row_stored"] == pytest.approx(400 / (large - small))
    with pytest.raises(RuntimeError):
        guard.figures_from_parts(counts[:3])


def test_the_measured_work_runs_on_the_fixed_inputs(tmp_path: Path) -> None:
    ft = guard.flowtrack()
    n = guard.EVENT_SIZES[0]
    protos, audience = guard.simulated(n, ft)
    assert [e.SerializeToString() for e in protos] == [e.SerializeToString() for e in guard.simulated(n, ft)[0]]
    kinds = [e.WhichOneof("kind") for e in protos]
    assert len(protos) == n and {"status", "click", "engagement"} <= set(kinds)
    events = guard.make_events(n, ft)
    store = ft.Store(tmp_path / "guard.db")
    try:
        results = guard.ingest(store, events, ft)
        # What the events say, counted from the protos by the simulation's own rule.
        touched = {getattr(e, k).recipient for e, k in zip(protos, kinds, strict=True) if k != "engagement"}
        want = ft.simulate.expected([r for r in audience if r.recipient in touched], protos)
        outcomes = [r.outcome.name for r in results]
        assert outcomes.count("ACCEPTED") == want.accepted and outcomes.count("DUPLICATE") == want.duplicates
        stats = ft.sreports.read_stats(store.reader_connection(), guard.BUSINESS, guard.CAMPAIGN)
        counts = stats.overall.counts
        got = {
            "total": counts.total,
            "pending": counts.pending,
            "not_submitted": counts.not_submitted,
            "submitted": counts.submitted,
            "success": counts.success,
            "failed": counts.failed,
        }
        assert got == {name: want.counts[name] for name in got}
        assert counts.success > 0 and counts.failed > 0 and stats.overall.clicks > 0  # a real mix
        assert (stats.overall.clicks, stats.overall.unique_clickers) == (want.clicks, want.unique_clickers)
        records = guard.message_records(store, ft)
        assert len(records) == counts.total
    finally:
        store.close()
    rows = guard.cycled(records, 250)
    page = ft.report_pb2.StreamMessageReportResponse.FromString(
        ft.report_pb2.StreamMessageReportResponse(rows=[ft.message_row(r) for r in rows]).SerializeToString()
    )
    assert guard.encode_report(rows, ft) > len(page.SerializeToString()) > 0
    assert [r.recipient for r in page.rows] == [r.recipient for r in rows]
    csv_bytes = guard.encode_csv(rows, ft)
    assert csv_bytes > 250 * 50
    # served from the stored forms: the same bytes, page for page
    report_rows, csv_rows = guard.stored_forms(rows, ft)
    assert guard.serve_report(report_rows, ft) == guard.encode_report(rows, ft)
    assert guard.serve_csv(csv_rows, ft) == csv_bytes
