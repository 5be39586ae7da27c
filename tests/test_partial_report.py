"""The partial report: `harness run` rewrites the run's report after each trial that ends, and
`harness report` on a run that still goes on or was interrupted reports what its trial records
hold so far, marked partial with the trials still missing (a real tiny grid on the session's
Ray, then the CLI on copies of its run directory)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

import harness.launch
import reports
from harness.cli import main
from reports.load import load_run
from tests.conftest import tiny_config, write_config

pytestmark = pytest.mark.timeout(300)

IDS = ["equal-simple_cnn-s0", "deepchest-simple_cnn-s0"]  # the grid's order: one at a time
MISSING_ONE = f"Partial: 1 of 2 trials finished; still missing: {IDS[1]}"


def _header(document: str) -> str:
    """The page's header, up to the verdict: what a reader sees first."""
    return document.split("<header>", 1)[1].split("<nav>", 1)[0]


@pytest.fixture(scope="module")
def finished_run(ray_session, tmp_path_factory):
    """A 2-trial grid trained one trial at a time, with a copy of the report and summary taken
    each time `harness run` refreshed them."""
    tmp_path = tmp_path_factory.mktemp("partial")
    cfg = tiny_config(
        tmp_path,
        grid={"methods": ["equal", "deepchest"]},
        train={"epochs": 2},
        resources={"max_concurrent_trials": 1},
    )
    path = write_config(tmp_path, cfg)
    run_dir = tmp_path / "runs" / "tiny"
    snapshots: list[tuple[str, str]] = []
    real = harness.launch.refresh_partial_report

    def recording(directory, progress=None):
        real(directory, progress)
        snapshots.append(
            (
                (directory / "report.html").read_text(encoding="utf-8"),
                (directory / "summary.md").read_text(encoding="utf-8"),
            )
        )

    patch = pytest.MonkeyPatch()
    patch.setattr(harness.launch, "refresh_partial_report", recording)
    try:
        assert main(["run", str(path)]) == 0
    finally:
        patch.undo()
    return run_dir, snapshots


def test_a_running_grid_rewrites_a_partial_report_after_each_trial(finished_run):
    run_dir, snapshots = finished_run
    assert len(snapshots) == 2  # one refresh per trial that ended
    html, markdown = snapshots[0]  # after the first trial, while the second trained
    lines = markdown.splitlines()
    assert lines[0] == "# tiny: summary (partial)" and lines[2] == MISSING_ONE
    header = _header(html)
    assert header.startswith(f'<p class="callout warn partial">{MISSING_ONE}.')
    assert "<title>tiny — benchmark report (partial)</title>" in html
    assert "1 completed" in header and "running" not in header  # the finished trial only
    # the final report, from the tables, is not partial
    final = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "Partial:" not in final and "(partial)" not in final
    assert (run_dir / "summary.md").read_text(encoding="utf-8").startswith("# tiny: summary\n")
    assert json.loads((run_dir / "manifest.json").read_text())["finished_at"]


def _copy(run_dir: Path, to: Path) -> Path:
    shutil.copytree(run_dir, to, symlinks=True)
    return to


def _set_status(run: Path, trial_id: str, status: str) -> None:
    path = run / "trials" / f"{trial_id}.json"
    record = json.loads(path.read_text())
    record["status"] = status
    path.write_text(json.dumps(record))


def _plain(frame: pd.DataFrame, key: list[str]) -> pd.DataFrame:
    """Values alone: Parquet's text columns load as pandas strings (NaN when missing), the
    records' as Python objects (None)."""
    frame = frame.sort_values(key).reset_index(drop=True).astype(object)
    return frame.where(frame.notna(), None)


def test_the_trial_records_give_the_tables_the_run_wrote(finished_run, tmp_path):
    """Read from its records (no tables yet), a run has the frames its Parquet tables give."""
    run_dir, _ = finished_run
    copy = _copy(run_dir, tmp_path / "copy")
    shutil.rmtree(copy / "results")
    from_records, from_tables = load_run(copy), load_run(run_dir)
    assert from_records.partial is None  # every trial ended: a whole run, just no tables yet
    for name in ("trials", "epochs"):
        tables = getattr(from_tables, name)
        records = getattr(from_records, name)
        shared = [c for c in tables.columns if c in records.columns]
        missing = [c for c in tables.columns if c not in records.columns]
        assert all(tables[c].isna().all() for c in missing), missing  # only empty columns
        key = ["trial_id", "epoch", "split", "task"] if name == "epochs" else ["trial_id"]
        pd.testing.assert_frame_equal(_plain(records[shared], key), _plain(tables[shared], key))
    assert set(from_records.trials["run"]) == {"tiny"}
    assert set(from_records.epochs["image_size"]) == {32}


def test_harness_report_on_an_interrupted_run_marks_it_partial(finished_run, tmp_path, capsys):
    run_dir, _ = finished_run
    run = _copy(run_dir, tmp_path / "interrupted")
    # as a driver killed while its second trial trained leaves it: no tables, no report
    shutil.rmtree(run / "results")
    for name in ("report.html", "summary.md", "summary.csv"):
        (run / name).unlink()
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["finished_at"] = None
    (run / "manifest.json").write_text(json.dumps(manifest))
    _set_status(run, IDS[1], "running")

    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"note: {MISSING_ONE}" in out
    header = _header((run / "report.html").read_text(encoding="utf-8"))
    assert header.startswith(f'<p class="callout warn partial">{MISSING_ONE}.')
    assert (run / "summary.md").read_text(encoding="utf-8").splitlines()[2] == MISSING_ONE
    assert list(pd.read_csv(run / "summary.csv")["method"])[:1] == ["equal"]
    loaded = load_run(run)
    assert loaded.partial.finished == 1 and loaded.partial.missing == (IDS[1],)
    assert list(loaded.trials["trial_id"]) == [IDS[0]]
    assert set(loaded.epochs["trial_id"]) == {IDS[0]}  # a running trial's epochs wait too


def test_a_resumed_run_reports_its_records_not_its_earlier_tables(finished_run, tmp_path):
    """A --resume keeps the tables of its earlier attempt until it writes new ones: the trial
    records saved since are what the run holds now. A finished run reads its tables."""
    run_dir, _ = finished_run
    run = _copy(run_dir, tmp_path / "resumed")
    assert load_run(run).partial is None  # finished: its tables
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["finished_at"] = None
    (run / "manifest.json").write_text(json.dumps(manifest))
    _set_status(run, IDS[1], "pending")  # reset by the resume, saved after the old tables
    tables = run / "results" / "trials.parquet"
    os.utime(tables, ns=(tables.stat().st_mtime_ns - 10**9,) * 2)
    assert load_run(run).partial.missing == (IDS[1],)
    written = reports.write_report(run)
    assert written.notes[0] == MISSING_ONE


def test_a_report_that_fails_to_refresh_is_one_warning_and_the_run_goes_on(tmp_path, capsys):
    """The Tune callback that refreshes the report after a trial ends never raises."""
    callback = harness.launch._partial_report_callback(tmp_path / "no-such-run", None)
    callback.on_trial_complete(0, [], None)
    callback.on_trial_error(0, [], None)
    err = capsys.readouterr().err.splitlines()
    assert (
        err
        == [
            "harness: warning: could not refresh the partial report (run directory not found: "
            f"{tmp_path / 'no-such-run'})"
        ]
        * 2
    )


def test_a_long_list_of_missing_trials_names_the_first_ten_and_counts_the_rest():
    from reports.load import MISSING_LISTED, Partial

    ids = tuple(f"t{i}" for i in range(1000))
    sentence = Partial(finished=3, total=1003, missing=ids).sentence
    listed = ", ".join(ids[:MISSING_LISTED])
    assert sentence == f"Partial: 3 of 1003 trials finished; still missing: {listed} and 990 more"
    assert Partial(1, 2, ("a",)).sentence == "Partial: 1 of 2 trials finished; still missing: a"


def test_the_record_cache_keeps_the_folders_read_last(finished_run, tmp_path):
    """A notebook that loads many runs does not keep every run's parsed records."""
    from reports import load as loading

    run_dir, _ = finished_run
    copies = [_copy(run_dir, tmp_path / f"run{i}") for i in range(loading._RECORDS_KEPT + 2)]
    for run in copies:
        loading._read_records(loading._record_files(run))
    kept = [run.resolve() / "trials" for run in copies[-loading._RECORDS_KEPT :]]
    assert list(loading._RECORDS) == kept
    # a folder read again is the most recent, and its unchanged records come from the cache
    before = loading._read_records(loading._record_files(copies[-loading._RECORDS_KEPT]))
    again = loading._read_records(loading._record_files(copies[-loading._RECORDS_KEPT]))
    assert list(loading._RECORDS)[-1] == kept[0]
    assert all(a is b for a, b in zip(again, before, strict=True))  # the same parsed objects


def test_two_writers_of_one_report_never_move_each_others_file(tmp_path):
    """`harness report` while the run refreshes its partial report: each writer has its own
    temporary file, so neither fails and the report is always one of the two, whole."""
    import threading

    from reports.html import _write_files

    target = tmp_path / "report.html"
    texts = ["A" * 200_000, "B" * 200_000]
    errors: list[Exception] = []

    def write(text: str) -> None:
        for _ in range(100):
            try:
                _write_files({target: text, target.with_name("summary.md"): text[:10]})
            except Exception as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(exc)

    threads = [threading.Thread(target=write, args=(text,)) for text in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert target.read_text() in texts
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "summary.md"]
