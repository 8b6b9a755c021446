"""The sign-off page in a real browser (issue 24): headless Chromium opens `<model>.report.html`
from file:// with the network off; nothing outside the file is requested, the console has no
error, and the counts and threshold on the page are those of results.json.

Skipped where no Chromium is installed; `.ci/run` installs Debian's `chromium`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from browser import Browser, PageLoad, chromium, living
from conftest import run_script
from PIL import Image

from ind_knn_ad.report.results import beside

pytestmark = pytest.mark.skipif(chromium() is None, reason="no chromium to open the report in")

# Every image decoded, the lazy ones below the fold too: a broken one counts.
BROKEN = """(await Promise.all([...document.images].map(
  i => { i.loading = 'eager'; return i.decode().then(() => 0, () => 1); }))
).reduce((a, b) => a + b, 0)"""
READ = f"""(async () => ({{
  threshold: document.getElementById('threshold').innerText,
  false_alarms: document.getElementById('false-alarms').innerText,
  misses: document.getElementById('misses').innerText,
  good: document.getElementById('good').innerText,
  defective: document.getElementById('defective').innerText,
  few_labels: document.getElementById('few-labels')?.innerText ?? null,
  enlarged: document.querySelectorAll('.pair img').length,
  tiles: document.querySelectorAll('.tile img').length,
  broken: {BROKEN},
  scripts: document.scripts.length,
}}))()"""


def open_report(page: Path, screenshot: Path) -> PageLoad:
    """Load the page and keep its first screenshot (PNG) at `screenshot`."""
    with Browser() as browser:
        loaded = browser.load(page, READ, ("#wrong",))
    screenshot.write_bytes(loaded.screenshots[0])
    return loaded


def assert_self_contained(loaded: PageLoad, page: Path) -> None:
    """Only the page itself and data: URIs were requested, with no error and no script."""
    outside = [url for url in loaded.requests if not url.startswith("data:")]
    assert outside == [page.resolve().as_uri()], outside
    assert loaded.errors == []
    assert loaded.values["broken"] == 0 and loaded.values["scripts"] == 0


def assert_matches_results(values: dict, results: dict) -> None:
    """The threshold and counts shown are those of results.json."""
    (tn, fp), (fn, tp) = results["confusion_matrix"]
    assert float(values["threshold"]) == pytest.approx(results["threshold"], rel=1e-5)
    shown = [int(values[key]) for key in ("false_alarms", "misses", "good", "defective")]
    assert shown == [fp, fn, tn + fp, fn + tp]
    assert values["tiles"] == len(results["images"])  # every test image in the grid


def test_fit_report_opens_offline_and_agrees_with_results(
    sample_model: Path, tmp_path: Path
) -> None:
    results_path, _, page = beside(sample_model)
    results = json.loads(results_path.read_text())
    loaded = open_report(page, tmp_path / "report.png")
    assert_self_contained(loaded, page)
    assert_matches_results(loaded.values, results)
    (_, fp), (fn, _) = results["confusion_matrix"]
    assert loaded.values["enlarged"] == 2 * (fp + fn)  # photo and map per wrong verdict
    assert loaded.load_ms < 3000
    with Image.open(tmp_path / "report.png") as shot:
        assert shot.size == (1280, 1600)
        assert np.asarray(shot.convert("L")).std() > 10  # not a blank page


def test_misses_are_shown_full_size_with_photo_and_map(
    sample_model: Path, sample_dataset: Path, tmp_path: Path
) -> None:
    """--evaluate-only at a threshold no image reaches: every defective image is a miss,
    drawn at full size (photo and map) first, and the page says the threshold was given."""
    model = tmp_path / "model.safetensors"
    shutil.copy(sample_model, model)
    options = ("--model", model, "--evaluate-only", "--threshold", "1e6")
    run_script("make_model.py", "--data-dir", sample_dataset, *options)
    results_path, _, page = beside(model)
    results = json.loads(results_path.read_text())
    loaded = open_report(page, tmp_path / "report.png")
    assert_self_contained(loaded, page)
    assert_matches_results(loaded.values, results)
    (_, _), (misses, caught) = results["confusion_matrix"]
    assert caught == 0 and loaded.values["enlarged"] == 2 * misses > 0


def test_a_threshold_from_few_labels_is_flagged_in_the_page_and_console(
    sample_model: Path, sample_dataset: Path, tmp_path: Path
) -> None:
    """--operating-point recall=0.99 from a handful of labelled images: the console and the
    page say how few, with the 95% bound, and the page shows the new threshold."""
    model = tmp_path / "model.safetensors"
    shutil.copy(sample_model, model)
    result = run_script(
        "make_model.py",
        "--data-dir",
        sample_dataset,
        "--model",
        model,
        "--evaluate-only",
        "--operating-point",
        "recall=0.99",
    )
    assert "recall may be as low as" in result.stderr
    assert "Report: " in result.stdout
    results_path, _, page = beside(model)
    loaded = open_report(page, tmp_path / "report.png")
    assert_self_contained(loaded, page)
    assert_matches_results(loaded.values, json.loads(results_path.read_text()))
    assert "recall may be as low as" in loaded.values["few_labels"]


def test_scoring_report_leaves_stdout_alone_and_shows_the_flagged_first(
    sample_model: Path, sample_dataset: Path, tmp_path: Path
) -> None:
    """anomaly_detector.py --report: the same stdout as without it; the page's counts and
    threshold are those of the printed flags and the model, flagged images drawn first."""
    folder = sample_dataset / "test"
    plain = run_script("anomaly_detector.py", "--model", sample_model, folder)
    page = tmp_path / "ci" / "run.html"
    reported = run_script("anomaly_detector.py", "--model", sample_model, "--report", page, folder)
    assert reported.stdout == plain.stdout
    flags = [int(line.rsplit(",", 1)[1]) for line in plain.stdout.splitlines()]
    with Browser() as browser:
        loaded = browser.load(
            page,
            f"""(async () => ({{threshold: document.getElementById('threshold').innerText,
                 flagged: document.getElementById('flagged').innerText,
                 passed: document.getElementById('passed').innerText,
                 drawn: document.querySelectorAll('.pair').length,
                 first: document.querySelector('td')?.innerText,
                 broken: {BROKEN},
                 scripts: document.scripts.length}}))()""",
        )
    assert_self_contained(loaded, page)
    values = loaded.values
    threshold = json.loads(beside(sample_model)[0].read_text())["threshold"]
    assert float(values["threshold"]) == pytest.approx(threshold, rel=1e-5)
    assert [int(values["flagged"]), int(values["passed"])] == [sum(flags), flags.count(0)]
    assert values["drawn"] == sum(flags)
    top = max(plain.stdout.splitlines(), key=lambda line: float(line.split(",")[1]))
    assert values["first"] == top.split(",")[0]


def test_a_closed_browser_leaves_no_process_and_no_profile(sample_model: Path) -> None:
    """The harness itself: closing ends Chromium's renderers too, so none of them writes into
    the profile while it is removed (CI failed once on 'Directory not empty')."""
    _, _, page = beside(sample_model)
    with Browser() as browser:
        browser.load(page, "1")
        group, profile = browser.process.pid, Path(browser.profile.name)
        assert living(group)
    assert not living(group) and not profile.exists()
