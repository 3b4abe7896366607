"""The evaluation report folder, its HTML page in Chromium, and compare."""

import csv
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from neuropath import report_figures
from neuropath.classes import CLASS_NAMES
from neuropath.cli import main
from neuropath.comparison import MetricComparison
from neuropath.evaluation import evaluate_model

FIGURES = [
    "confusion_matrix.png",
    "confusion_matrix_normalized.png",
    "roc_curves.png",
    "reliability.png",
    "f1_by_class.png",
    "pathology_confusion.png",
    "sequence_confusion.png",
    "mistakes.png",
]


@pytest.fixture(scope="module")
def report_dir(small_model_file, real_sample, tmp_path_factory):
    """A report on the real slices, written through the command line."""
    out = tmp_path_factory.mktemp("reports") / "real"
    command = ["evaluate", "--model", str(small_model_file), "--data"]
    command += [str(real_sample), "--out", str(out), "--bootstrap", "200"]
    assert main([*command, "--seed", "1"]) == 0
    return out


def _report(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text(encoding="utf-8"))


def test_the_report_folder_holds_every_file(report_dir):
    names = sorted(p.name for p in report_dir.iterdir())
    assert names == sorted(
        [*FIGURES, "predictions.csv", "report.html", "report.json", "report.md"]
    )
    for figure in FIGURES:
        assert (report_dir / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_json_scores_present_classes_and_records_provenance(
    report_dir, small_model_file
):
    report = _report(report_dir)

    assert report["n_images"] == 112
    assert sorted(report["absent_classes"]) == [
        n for n in CLASS_NAMES if n.startswith("Outros")
    ]
    assert len(report["per_class"]) == 14
    assert all("roc_auc" in row for row in report["per_class"].values())
    for name in ("accuracy", "balanced_accuracy", "macro_f1"):
        low, high = report["confidence_intervals"][name]
        assert 0 <= low <= high <= 1
    assert report["confidence_intervals"]["n_resamples"] == 200
    assert report["confidence_intervals"]["seed"] == 1
    assert report["views"]["pathology"]["absent_groups"] == ["Outros"]
    assert report["views"]["sequence"]["groups"] == ["T1", "T1C+", "T2"]
    assert 1 <= len(report["worst_mistakes"]) <= 12

    provenance = report["provenance"]
    digest = hashlib.sha256(Path(small_model_file).read_bytes()).hexdigest()
    assert provenance["model_sha256"] == digest
    assert provenance["manifest"] is None
    assert set(provenance["versions"]) >= {"neuropath", "keras", "tensorflow"}


def test_predictions_csv_has_a_probability_per_class(report_dir):
    with open(report_dir / "predictions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 112
    assert list(rows[0])[:4] == ["path", "true_class", "predicted_class", "confidence"]
    assert len(rows[0]) == 4 + 17
    total = sum(float(v) for v in list(rows[0].values())[4:])
    assert total == pytest.approx(1.0, abs=1e-4)


def test_markdown_holds_the_same_tables(report_dir):
    text = (report_dir / "report.md").read_text(encoding="utf-8")
    report = _report(report_dir)
    assert "not for diagnosis" in text
    assert f"| Accuracy | {100 * report['accuracy']:.1f}% |" in text
    assert "| Outros T1 | 0 | absent |" in text
    assert "![Confusion matrix (counts)](confusion_matrix.png)" in text


def _chromium() -> str | None:
    for candidate in (os.environ.get("NEUROPATH_CHROMIUM"), "chromium"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def test_the_page_opens_offline_in_chromium_with_every_figure(report_dir, tmp_path):
    browser_path = _chromium()
    if browser_path is None:
        pytest.skip("Chromium not found: install Debian's chromium package")
    from playwright.sync_api import sync_playwright

    page_file = report_dir / "report.html"
    source = page_file.read_text(encoding="utf-8")
    external = re.findall(r'(?:src|href)="(?!data:)([^"]*)"', source)
    assert external == []

    requests, failures, errors = [], [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("request", lambda r: requests.append(r.url))
        page.on("requestfailed", lambda r: failures.append(r.url))
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_file.as_uri(), wait_until="load")

        summary = page.locator("table#summary")
        assert summary.is_visible()
        summary_text = summary.inner_text()
        images = {
            where: page.eval_on_selector_all(
                selector,
                "imgs => imgs.map(i => [i.alt, i.complete, i.naturalWidth, "
                "i.naturalHeight, i.getBoundingClientRect().width])",
            )
            for where, selector in (("figures", "figure img"), ("gallery", ".card img"))
        }
        n_images = page.locator("img").count()
        class_rows = page.locator("table#classes tbody tr").count()
        page.screenshot(path=tmp_path / "report.png", full_page=True)
        browser.close()

    assert requests == [page_file.as_uri()]
    assert failures == [] and errors == []
    assert "Accuracy" in summary_text and "Macro F1" in summary_text
    assert re.search(r"\d+\.\d% to \d+\.\d%", summary_text)
    report = _report(report_dir)
    assert len(images["figures"]) == 7  # the five of FIGURES and the two views
    # Each mistake shows its thumbnail and its Grad-CAM overlay.
    assert len(images["gallery"]) == 2 * len(report["worst_mistakes"])
    assert n_images == 7 + 2 * len(report["worst_mistakes"])
    for alt, complete, width, height, shown in images["figures"] + images["gallery"]:
        assert complete and width > 0 and height > 0 and shown > 0, alt
    assert class_rows == 17
    assert (tmp_path / "report.png").stat().st_size > 50_000


def test_an_interrupted_evaluation_keeps_the_previous_report(
    report_dir, small_model_file, real_sample, tmp_path, monkeypatch
):
    out = tmp_path / "kept"
    shutil.copytree(report_dir, out)
    before = (out / "report.json").read_bytes()

    def crash(*args, **kwargs):
        raise RuntimeError("figure failed")

    monkeypatch.setattr(report_figures, "plot_roc_curves", crash)
    with pytest.raises(RuntimeError, match="figure failed"):
        evaluate_model(small_model_file, real_sample, out, n_resamples=20)
    assert (out / "report.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]


def test_compare_prints_differences_and_interval_overlap(report_dir, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(report_dir, other)
    changed = _report(other)
    changed["accuracy"] += 0.25
    changed["confidence_intervals"]["accuracy"] = [0.95, 0.99]
    changed["log_loss"] -= 0.5
    (other / "report.json").write_text(json.dumps(changed))

    assert main(["compare", str(report_dir), str(other)]) == 0
    out = capsys.readouterr().out
    lines = {line.split("  ")[0]: line for line in out.splitlines()}

    assert "Both reports scored the same 112 images." in out
    assert "+0.2500" in lines["accuracy"] and lines["accuracy"].endswith("NO")
    assert lines["accuracy"].split()[4] == "B"
    assert lines["macro F1"].endswith("yes") and "+0.0000" in lines["macro F1"]
    assert lines["log loss"].split()[5] == "B"  # lower log loss is better
    assert "CIs overlap" in out


def test_intervals_that_touch_overlap_and_missing_ones_say_nothing():
    touching = MetricComparison("m", 0.5, 0.7, (0.4, 0.6), (0.6, 0.8))
    apart = MetricComparison("m", 0.5, 0.9, (0.4, 0.6), (0.61, 0.95))
    assert touching.intervals_overlap is True
    assert apart.intervals_overlap is False
    assert MetricComparison("m", 0.5, None).intervals_overlap is None
    assert MetricComparison("m", 0.5, None).difference is None


def test_compare_names_a_missing_report(tmp_path, capsys):
    assert main(["compare", str(tmp_path), str(tmp_path)]) == 2
    assert "No evaluation report" in capsys.readouterr().err
