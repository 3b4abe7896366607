"""The human-readable pages of an evaluation report: HTML and Markdown.

Both are laid out from ``report.json`` alone. The HTML page is
*self-contained*: figures and thumbnails are embedded as base64 data URIs and
the style sheet is inline, so it opens offline and can be mailed as one file.
The Markdown page holds the same tables, for pasting into a paper.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from neuropath.classes import short_name

__all__ = [
    "FIGURES",
    "read_figures",
    "render_html",
    "render_markdown",
    "summary_rows",
]

# Figure file, its title, and what a reader should look for.
FIGURES = (
    (
        "confusion_matrix.png",
        "Confusion matrix (counts)",
        "Rows are the true classes, columns the predicted ones; the diagonal "
        "holds the correct predictions.",
    ),
    (
        "confusion_matrix_normalized.png",
        "Confusion matrix (share of each true class)",
        "Each row sums to 100%: the diagonal is the sensitivity (recall) of "
        "the class, off-diagonal cells show where its images went.",
    ),
    (
        "roc_curves.png",
        "ROC curves",
        "Each class against all others. A curve hugging the top-left corner "
        "(AUC near 1) ranks that class's images above the rest; the dashed "
        "diagonal is chance (AUC 0.5).",
    ),
    (
        "reliability.png",
        "Calibration",
        "Bars on the dashed diagonal mean that a prediction made with 80% "
        "confidence is right about 80% of the time; bars below it mean "
        "over-confidence.",
    ),
    (
        "f1_by_class.png",
        "F1 score by class",
        "One bar per class, coloured by pathology; n is the number of test "
        "images of the class.",
    ),
)

RESEARCH_NOTE = (
    "Research software, not a medical device: not for diagnosis. These numbers "
    "describe this model on these images only."
)

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Arial,
  sans-serif; color: #1d1d1f; margin: 0; background: #f7f7f8;
  line-height: 1.45; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 28px 64px;
  background: white; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; }
h2 { font-size: 1.3em; margin-top: 2em; border-bottom: 2px solid #e4e4e7;
  padding-bottom: 4px; }
h3 { font-size: 1.05em; margin-top: 1.4em; }
.subtitle { color: #52525b; margin-top: 0; }
.note { background: #fff7e6; border-left: 4px solid #f59e0b; padding: 10px 14px;
  margin: 16px 0; }
table { border-collapse: collapse; margin: 10px 0 6px; font-size: 0.95em; }
th, td { padding: 5px 12px; text-align: left; border-bottom: 1px solid #e4e4e7;
  vertical-align: top; }
th { background: #f4f4f5; }
td.num { text-align: right; font-variant-numeric: tabular-nums;
  white-space: nowrap; }
tr.absent td { color: #71717a; font-style: italic; }
.headline { font-size: 1.15em; }
.explain { color: #52525b; font-size: 0.9em; }
figure { margin: 18px 0 28px; }
figure img { max-width: 100%; height: auto; border: 1px solid #e4e4e7; }
figcaption { color: #52525b; font-size: 0.92em; margin-top: 4px; }
.view { display: flex; flex-wrap: wrap; gap: 8px 32px; align-items: flex-start; }
.view figure { margin-top: 10px; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill,
  minmax(200px, 1fr)); gap: 16px; }
.card { border: 1px solid #e4e4e7; padding: 8px; font-size: 0.88em; }
.card img { width: 100%; aspect-ratio: 1; object-fit: contain;
  background: black; }
.view figure img { max-width: 560px; }
.card .pair { display: flex; gap: 4px; }
.card .pair img { width: 50%; }
.card .path { color: #71717a; word-break: break-all; font-size: 0.85em; }
ul.reading li { margin-bottom: 4px; }
"""


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _decimal(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _when(created: str | None) -> str:
    """``2026-01-31 14:05 UTC`` from an ISO 8601 time stamp."""
    return f"{created[:10]} {created[11:16]} UTC" if created else "at an unknown time"


def _interval(bounds: Sequence[float] | None) -> str:
    if not bounds:
        return ""
    return f"{100 * bounds[0]:.1f}% to {100 * bounds[1]:.1f}%"


def summary_rows(report: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """The headline metrics as ``(name, value, 95% interval, meaning)`` rows."""
    ci = report.get("confidence_intervals", {})
    views = report.get("views", {})
    calibration = report.get("calibration", {})
    rows = [
        (
            "Accuracy",
            _percent(report["accuracy"]),
            _interval(ci.get("accuracy")),
            "share of images given their exact class (of 17)",
        ),
        (
            "Balanced accuracy",
            _percent(report.get("balanced_accuracy")),
            _interval(ci.get("balanced_accuracy")),
            "mean sensitivity over the classes present: small classes count "
            "as much as large ones",
        ),
        (
            "Macro F1",
            _percent(report["macro_avg"]["f1-score"]),
            _interval(ci.get("macro_f1")),
            "mean over present classes of the balance of precision and recall",
        ),
        (
            "Macro precision",
            _percent(report["macro_avg"]["precision"]),
            "",
            "mean positive predictive value over present classes",
        ),
        (
            "Macro recall",
            _percent(report["macro_avg"]["recall"]),
            "",
            "mean sensitivity over present classes (equals balanced accuracy)",
        ),
        (
            "Weighted F1",
            _percent(report["weighted_avg"]["f1-score"]),
            "",
            "F1 averaged with each class weighted by its number of images",
        ),
        (
            "Top-2 accuracy",
            _percent(report.get("top_2_accuracy")),
            "",
            "true class among the two most probable",
        ),
        (
            "Top-3 accuracy",
            _percent(report.get("top_3_accuracy")),
            "",
            "true class among the three most probable",
        ),
        (
            "Macro ROC AUC",
            _decimal(report["macro_avg"].get("roc_auc")),
            "",
            "how well each class is ranked above the others; 0.5 is chance, 1 perfect",
        ),
        (
            "Log loss",
            _decimal(report.get("log_loss")),
            "",
            "mean -ln(probability given to the true class); lower is better",
        ),
        (
            "Expected calibration error",
            _decimal(calibration.get("expected_calibration_error")),
            "",
            f"mean gap between confidence and accuracy over "
            f"{calibration.get('n_bins', '?')} confidence bins; lower is better",
        ),
    ]
    for view, label in (("pathology", "Pathology"), ("sequence", "Sequence")):
        if view in views:
            groups = len(views[view]["groups"])
            rows.append(
                (
                    f"{label} accuracy",
                    _percent(views[view]["accuracy"]),
                    _interval(views[view].get("accuracy_ci")),
                    f"right {view} ({groups} groups), whatever the exact class",
                )
            )
    return rows


def _class_rows(report: Mapping[str, Any]) -> list[tuple[str, str, list[str]]]:
    """``(class name, short name, cells)`` for every class, absent ones too."""
    per_class = report["per_class"]
    names = report.get("class_names") or [*per_class, *report["absent_classes"]]
    rows = []
    for name in names:
        if name in per_class:
            row = per_class[name]
            cells = [
                str(int(row["support"])),
                _percent(row["precision"]),
                _percent(row["recall"]),
                _percent(row["f1-score"]),
                _decimal(row.get("roc_auc")),
            ]
        else:
            cells = []
        rows.append((name, short_name(name), cells))
    return rows


CLASS_HEADER = [
    "Class",
    "Images",
    "Precision (PPV)",
    "Recall (sensitivity)",
    "F1",
    "ROC AUC",
]


def _group_rows(view: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    rows = []
    for group in view["groups"]:
        row = view["per_group"].get(group)
        if row is None:
            rows.append((group, []))
        else:
            rows.append(
                (
                    group,
                    [
                        str(int(row["support"])),
                        _percent(row["precision"]),
                        _percent(row["recall"]),
                        _percent(row["f1-score"]),
                    ],
                )
            )
    return rows


GROUP_HEADER = ["Group", "Images", "Precision", "Recall", "F1"]


def _provenance_rows(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    p = report.get("provenance", {})
    versions = p.get("versions", {})
    rows = [
        ("Created (UTC)", p.get("created", "")),
        ("Images evaluated", str(report["n_images"])),
        ("Images that could not be read", str(len(report.get("unreadable_files", [])))),
        ("Model file", p.get("model") or "n/a"),
        ("Model SHA-256", p.get("model_sha256") or "n/a"),
        ("Split manifest", p.get("manifest") or "none: every image in the folder"),
        ("Manifest SHA-256", p.get("manifest_sha256") or "n/a"),
        ("Image folder", p.get("data_dir") or "n/a"),
        ("Run folder", p.get("run_dir") or "n/a"),
        (
            "Bootstrap",
            "{n} stratified resamples, seed {s}".format(
                n=report.get("confidence_intervals", {}).get("n_resamples", "?"),
                s=report.get("confidence_intervals", {}).get("seed", "?"),
            ),
        ),
    ]
    rows += [(f"{name} version", version) for name, version in versions.items()]
    return rows


# HTML.


def _e(text: Any) -> str:
    return html.escape(str(text))


def _html_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    table_id: str | None = None,
    numeric: Sequence[int] = (),
    row_classes: Sequence[str] | None = None,
) -> str:
    """A table; a row shorter than the header stretches its last cell."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        css = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        cells = []
        for j, cell in enumerate(row):
            attributes = ' class="num"' if j in numeric else ""
            if j == len(row) - 1 and len(row) < len(header):
                attributes = f' colspan="{len(header) - j}"'
            cells.append(f"<td{attributes}>{_e(cell)}</td>")
        body.append(f"<tr{css}>{''.join(cells)}</tr>")
    ident = f' id="{table_id}"' if table_id else ""
    return (
        f"<table{ident}><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _figure_html(png: bytes, title: str, caption: str) -> str:
    return (
        f'<figure><img src="{_data_uri(png)}" alt="{_e(title)}">'
        f"<figcaption><strong>{_e(title)}.</strong> {_e(caption)}</figcaption>"
        "</figure>"
    )


def _summary_html(report: Mapping[str, Any]) -> str:
    rows = [
        (name, value, ci or "\u2014", meaning)
        for name, value, ci, meaning in summary_rows(report)
    ]
    header = ["Metric", "Value", "95% interval", "What it means"]
    return _html_table(header, rows, table_id="summary", numeric=(1, 2))


def _views_html(report: Mapping[str, Any], figures: Mapping[str, bytes]) -> str:
    parts = []
    for view, label in (("pathology", "Pathology"), ("sequence", "MRI sequence")):
        data = report.get("views", {}).get(view)
        if not data:
            continue
        rows = _group_rows(data)
        table = _html_table(
            GROUP_HEADER,
            [[g, *(cells or ["0", "absent: not scored"])] for g, cells in rows],
            numeric=range(1, 5),
            row_classes=["" if cells else "absent" for _, cells in rows],
        )
        figure = figures.get(f"{view}_confusion.png")
        parts.append(
            f"<h3>{label}: accuracy {_percent(data['accuracy'])} "
            f"(95% interval {_interval(data.get('accuracy_ci'))})</h3>"
            f'<div class="view">{table}'
            + (
                _figure_html(
                    figure,
                    f"{label} confusion matrix",
                    "Each row sums to 100%; counts in brackets.",
                )
                if figure
                else ""
            )
            + "</div>"
        )
    return "".join(parts)


def _class_table_html(report: Mapping[str, Any]) -> str:
    rows = _class_rows(report)
    return _html_table(
        CLASS_HEADER,
        [
            [s, *(cells or ["0", "absent from the evaluated images: not scored"])]
            for _, s, cells in rows
        ],
        table_id="classes",
        numeric=range(1, 6),
        row_classes=["" if cells else "absent" for _, _, cells in rows],
    )


def _gallery_html(
    report: Mapping[str, Any],
    thumbnails: Mapping[str, np.ndarray | None],
    overlays: Mapping[str, np.ndarray | None] | None = None,
) -> str:
    mistakes = report.get("worst_mistakes", [])
    if not mistakes:
        return "<p>No wrong predictions.</p>"
    cards = []
    for m in mistakes:
        image = thumbnails.get(m["path"])
        heat = (overlays or {}).get(m["path"])
        picture = (
            f'<img src="{_data_uri(_png_bytes(image))}" alt="{_e(m["path"])}">'
            if image is not None
            else "<p>(image unreadable)</p>"
        )
        if heat is not None:
            picture = (
                f'<div class="pair">{picture}<img src="'
                f'{_data_uri(_png_bytes(heat))}" alt="Grad-CAM of '
                f'{_e(m["path"])}" title="Grad-CAM heat map of the predicted '
                'class"></div>'
            )
        cards.append(
            f'<div class="card">{picture}'
            f"<div><strong>True:</strong> {_e(short_name(m['true_class']))}</div>"
            f"<div><strong>Predicted:</strong> "
            f"{_e(short_name(m['predicted_class']))} "
            f"({_percent(m['probability'])})</div>"
            f"<div>Probability of the true class: "
            f"{_percent(m['true_class_probability'])}</div>"
            f'<div class="path">{_e(m["path"])}</div></div>'
        )
    return f'<div class="gallery">{"".join(cards)}</div>'


READING_NOTES = (
    "The 95% interval comes from resampling the test images 1,000 times "
    "(within each true class) and recomputing the metric: roughly, the range "
    "of values another test set of the same make-up could give. Wide intervals "
    "mean few images.",
    "Classes with no image in the evaluated set are listed as absent: they are "
    "left out of every average, not counted as zero.",
    "Balanced accuracy and macro averages weigh every present class equally, so "
    "a class of 7 images counts as much as one of 70.",
    "Intervals are given for accuracy, balanced accuracy, macro F1 and the "
    "two views; a dash means none was computed.",
    "The pathology and sequence views add up the probabilities of the classes "
    "of each group (for example the three Glioma classes) and take the most "
    "probable group.",
)


def render_html(
    report: Mapping[str, Any],
    figures: Mapping[str, bytes],
    thumbnails: Mapping[str, np.ndarray | None] | None = None,
    overlays: Mapping[str, np.ndarray | None] | None = None,
) -> str:
    """The report as one self-contained HTML page.

    Args:
        report: the content of ``report.json``.
        figures: PNG bytes by file name (`FIGURES` and the views'
            ``pathology_confusion.png`` and ``sequence_confusion.png``).
        thumbnails: RGB thumbnails of the worst mistakes by their ``path``.
        overlays: their Grad-CAM overlays by ``path``, shown beside them.

    Returns:
        The page, UTF-8 text with no external reference.
    """
    provenance = report.get("provenance", {})
    notes = report.get("confidence_intervals", {})
    reading = list(READING_NOTES)
    reading[0] = reading[0].replace("1,000", f"{notes.get('n_resamples', 1000):,}")
    class_table = _class_table_html(report)
    figure_html = "".join(
        _figure_html(figures[name], title, caption)
        for name, title, caption in FIGURES
        if name in figures
    )
    unreadable = report.get("unreadable_files", [])
    unreadable_html = (
        "<h2>Files that could not be read</h2><ul>"
        + "".join(f"<li>{_e(p)}</li>" for p in unreadable)
        + "</ul>"
        if unreadable
        else ""
    )
    model = Path(provenance.get("model") or "model").name
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Evaluation report: {_e(model)}</title>
<style>{STYLE}</style>
</head>
<body>
<main>
<h1>Brain MRI slice classifier: evaluation report</h1>
<p class="subtitle">Model <code>{_e(model)}</code> on {report["n_images"]} images,
evaluated {_e(_when(provenance.get("created")))}.</p>
<p class="note"><strong>{_e(RESEARCH_NOTE)}</strong></p>
<p class="headline">The model named the exact class (of 17) for
<strong>{_percent(report["accuracy"])}</strong> of the images and the right
pathology for <strong>{
        _percent(report.get("views", {}).get("pathology", {}).get("accuracy"))
    }</strong>.</p>

<h2>Summary</h2>
{_summary_html(report)}
<h3>How to read it</h3>
<ul class="reading">{"".join(f"<li>{_e(n)}</li>" for n in reading)}</ul>

<h2>By pathology and by MRI sequence</h2>
{_views_html(report, figures)}

<h2>By class</h2>
{class_table}

<h2>Figures</h2>
{figure_html}

<h2>Most confident mistakes</h2>
<p class="explain">The wrong predictions made with the highest probability:
worth a look for label errors, look-alike classes or image problems. Beside
each slice, its Grad-CAM heat map (bright = evidence for the predicted class):
evidence on the skull, a label or the background points to a data problem.</p>
{_gallery_html(report, thumbnails or {}, overlays)}
{unreadable_html}
<h2>Provenance</h2>
{_html_table(["Item", "Value"], _provenance_rows(report), table_id="provenance")}
<p class="explain">neuropath: {_e(RESEARCH_NOTE)}</p>
</main>
</body>
</html>
"""


# Markdown.


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join(
        [line(header), line(["---"] * len(header)), *(line(r) for r in rows)]
    )


def render_markdown(report: Mapping[str, Any], figure_names: Sequence[str]) -> str:
    """The report's tables in Markdown, with the figures linked by file name.

    Args:
        report: the content of ``report.json``.
        figure_names: PNG files present beside the page.

    Returns:
        The Markdown text.
    """
    sections = [
        "# Evaluation report",
        f"*{RESEARCH_NOTE}*",
        "## Summary",
        _markdown_table(
            ["Metric", "Value", "95% interval"],
            [(n, v, ci or "\u2014") for n, v, ci, _ in summary_rows(report)],
        ),
        "## By class",
        _markdown_table(
            CLASS_HEADER,
            [
                [s, *(cells or ["0", "absent", "", "", ""])]
                for _, s, cells in _class_rows(report)
            ],
        ),
    ]
    for view, label in (("pathology", "Pathology"), ("sequence", "MRI sequence")):
        data = report.get("views", {}).get(view)
        if data:
            sections += [
                f"## {label}: accuracy {_percent(data['accuracy'])} "
                f"(95% interval {_interval(data.get('accuracy_ci'))})",
                _markdown_table(
                    GROUP_HEADER,
                    [
                        [g, *(c or ["0", "absent", "", ""])]
                        for g, c in _group_rows(data)
                    ],
                ),
            ]
    sections.append("## Figures")
    titles = {name: title for name, title, _ in FIGURES}
    titles["pathology_confusion.png"] = "Pathology confusion matrix"
    titles["sequence_confusion.png"] = "Sequence confusion matrix"
    titles["mistakes.png"] = "Most confident mistakes"
    sections += [f"![{titles.get(n, n)}]({n})" for n in figure_names]
    sections += [
        "## Provenance",
        _markdown_table(["Item", "Value"], _provenance_rows(report)),
    ]
    return "\n\n".join(sections) + "\n"


def read_figures(folder: str | os.PathLike, names: Sequence[str]) -> dict[str, bytes]:
    """PNG bytes of the named figures that exist in ``folder``."""
    folder = Path(folder)
    return {n: (folder / n).read_bytes() for n in names if (folder / n).is_file()}
