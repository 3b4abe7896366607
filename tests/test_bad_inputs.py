"""Messy data set folders: every bad file is named with its reason, every odd but
valid file is read as the model should see it, and training goes on without
the bad ones."""

import csv
import json
import logging
import os
import shutil
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO
from PIL import Image

from neuropath.classes import CLASS_NAMES
from neuropath.cli import main
from neuropath.config import load_config
from neuropath.data_check import check_data
from neuropath.dataset import load_image, read_manifest, scan_dataset, write_manifest
from neuropath.image_files import read_image
from neuropath.training import select_records
from neuropathology_model import NeuropathologyClassifier

DEMO_CONFIG = REPO / "configs" / "demo.yaml"
CLASS = "NORMAL T1"
ACCENTED = unicodedata.normalize("NFD", "coupe axiale é ñ.png")
NON_UTF8 = os.fsdecode(b"scan-\xff\xfe.png")
TINY_RUN = [
    "data.image_size=32",
    "train.batch_size=16",
    "train.fine_tune.epochs=1",
    "gradients.enabled=false",
]


def slice_pixels(seed: int, size: tuple[int, int] = (64, 80)) -> np.ndarray:
    """A blocky RGB image, different for every seed (no near duplicates)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    image = Image.fromarray(blocks).resize(size[::-1], Image.NEAREST)
    return np.asarray(image)


def _save(path: Path, image: Image.Image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def build_bad_corpus(root: Path, outside: Path) -> tuple[dict, dict]:
    """Writes every case into ``root / CLASS``.

    Returns:
        ``(unusable, usable)``: the reason expected for each bad file, and the
        pixels (or ``None`` where checked elsewhere) of each usable one, both
        keyed by path relative to ``root``.
    """
    folder = root / CLASS
    folder.mkdir(parents=True)
    good = _save(folder / "good.jpg", Image.fromarray(slice_pixels(1)), quality=95)
    unusable = {
        "empty.jpg": "empty file",
        "truncated.jpg": "truncated JPEG",
        "notes.jpg": "not an image (text/unknown format)",
        "tiny.png": "too small (1x1 < 32 px)",
        "huge.png": "decompression bomb guard "
        f"(90000000 pixels > {Image.MAX_IMAGE_PIXELS})",
        "missing-target.jpg": "broken symbolic link",
        "readme.txt": "not an image file (.txt)",
    }
    (folder / "empty.jpg").write_bytes(b"")
    data = good.read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "notes.jpg").write_text("exported by the PACS viewer\n")
    _save(folder / "tiny.png", Image.new("L", (1, 1), 200))
    # 90 million pixels, a few kilobytes on disk.
    _save(folder / "huge.png", Image.new("1", (10000, 9000)))
    os.symlink(root / "gone.jpg", folder / "missing-target.jpg")
    (folder / "readme.txt").write_text("slices of one patient")

    usable = {"good.jpg": None}
    ramp = np.add.outer(np.arange(64), np.arange(80)).astype(np.uint32) * 65535 // 142
    _save(folder / "sixteen-bit.png", Image.fromarray(ramp.astype(np.uint16)))
    rgba = np.dstack([slice_pixels(2), np.full((64, 80), 128, np.uint8)])
    _save(folder / "transparent.png", Image.fromarray(rgba, "RGBA"))
    palette = Image.fromarray(slice_pixels(3)).quantize(16)
    palette.info["transparency"] = int(np.asarray(palette)[0, 0])
    _save(folder / "palette.png", palette, transparency=palette.info["transparency"])
    _save(folder / "cmyk.jpg", Image.fromarray(slice_pixels(4)).convert("CMYK"))
    rotated = Image.fromarray(slice_pixels(5))
    exif = rotated.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    _save(folder / "rotated.jpg", rotated, quality=95, exif=exif)
    frames = [Image.fromarray(slice_pixels(6)), Image.fromarray(slice_pixels(7))]
    _save(folder / "animated.gif", frames[0], save_all=True, append_images=frames[1:])
    pages = [Image.fromarray(slice_pixels(15)), Image.fromarray(slice_pixels(16))]
    _save(folder / "pages.tif", pages[0], save_all=True, append_images=pages[1:])
    _save(folder / "slice.webp", Image.fromarray(slice_pixels(8)), lossless=True)
    _save(
        folder / "series 2" / "deeper" / "nested.png", Image.fromarray(slice_pixels(9))
    )
    _save(folder / ACCENTED, Image.fromarray(slice_pixels(10)))
    _save(folder / NON_UTF8, Image.fromarray(slice_pixels(11)))
    target = _save(outside / "elsewhere.png", Image.fromarray(slice_pixels(12)))
    os.symlink(target, folder / "linked.png")
    _save(
        outside / "series" / "in-linked-folder.png", Image.fromarray(slice_pixels(13))
    )
    os.symlink(outside / "series", folder / "linked series")
    os.symlink("..", folder / "series 2" / "loop")  # must not be followed forever
    usable.update(
        dict.fromkeys(
            [
                "sixteen-bit.png",
                "transparent.png",
                "palette.png",
                "cmyk.jpg",
                "rotated.jpg",
                "animated.gif",
                "pages.tif",
                "slice.webp",
                "series 2/deeper/nested.png",
                ACCENTED,
                NON_UTF8,
                "linked.png",
                "linked series/in-linked-folder.png",
            ]
        )
    )

    # Hidden and system files: passed over without a word.
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(100))
    (folder / "Thumbs.db").write_bytes(bytes(512))
    (folder / "._rotated.jpg").write_bytes(b"\x00\x05\x16\x07" + bytes(80))
    _save(folder / ".thumbnails" / "small.png", Image.fromarray(slice_pixels(14)))

    unusable = {f"{CLASS}/{name}": reason for name, reason in unusable.items()}
    usable = {f"{CLASS}/{name}": pixels for name, pixels in usable.items()}
    return unusable, usable


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "data"
    unusable, usable = build_bad_corpus(root, tmp_path / "outside")
    return root, unusable, usable


def test_every_unusable_file_is_named_with_its_reason(corpus):
    root, unusable, usable = corpus

    scan = scan_dataset(root)

    assert dict(scan.unusable) == unusable
    assert sorted(r.path for r in scan.records) == sorted(usable)
    assert scan.unknown_folders == []


def test_odd_but_valid_files_are_read_as_the_model_should_see_them(tmp_path):
    root = tmp_path / "data"
    build_bad_corpus(root, tmp_path / "outside")
    folder = root / CLASS

    # 16-bit: the full range is scaled to 0-255, not clipped to white.
    sixteen = read_image(folder / "sixteen-bit.png")
    assert sixteen.max() == 255 and sixteen[0, 0, 0] == 0
    assert np.mean(sixteen == 255) < 0.01
    assert np.all(np.diff(sixteen[0, :, 0].astype(int)) >= 0)
    # Half-transparent pixels are composited on black: half as bright.
    transparent = read_image(folder / "transparent.png").astype(int)
    assert np.abs(transparent - slice_pixels(2).astype(int) * 128 // 255).max() <= 1
    # The palette's transparent colour becomes black.
    palette = Image.open(folder / "palette.png")
    clear = np.asarray(palette) == palette.info["transparency"]
    assert np.all(read_image(folder / "palette.png")[clear] == 0)
    # CMYK is converted to RGB.
    cmyk = read_image(folder / "cmyk.jpg").astype(int)
    assert cmyk.shape == (64, 80, 3) and np.abs(cmyk - slice_pixels(4)).mean() < 12
    # EXIF orientation 6: the stored image turns 90 degrees clockwise.
    stored = np.asarray(Image.open(folder / "rotated.jpg").convert("RGB"))
    assert np.array_equal(read_image(folder / "rotated.jpg"), np.rot90(stored, -1))
    # Animations and multi-page files give their first frame.
    gif = read_image(folder / "animated.gif").astype(int)
    assert np.abs(gif - slice_pixels(6)).mean() < np.abs(gif - slice_pixels(7)).mean()
    assert np.array_equal(read_image(folder / "pages.tif"), slice_pixels(15))
    assert np.array_equal(read_image(folder / "slice.webp"), slice_pixels(8))
    # Links, accents and names that are not UTF-8.
    assert np.array_equal(read_image(folder / "linked.png"), slice_pixels(12))
    assert np.array_equal(read_image(folder / NON_UTF8), slice_pixels(11))
    assert np.array_equal(read_image(folder / ACCENTED), slice_pixels(10))


@pytest.mark.parametrize("name", ["rotated.jpg", "sixteen-bit.png", "cmyk.jpg"])
def test_training_pipeline_sees_the_pixels_the_check_approved(tmp_path, name):
    root = tmp_path / "data"
    build_bad_corpus(root, tmp_path / "outside")
    path = root / CLASS / name

    fed = load_image(tf.constant(os.fsencode(path)), 48).numpy()
    expected = tf.image.resize_with_pad(read_image(path), 48, 48).numpy()

    assert np.array_equal(fed, expected)


def test_check_data_prints_counts_and_every_reason(corpus, capsys):
    root, unusable, usable = corpus
    (root / "Exports 2021").mkdir()

    code = main(["check-data", str(root)])
    out = capsys.readouterr().out

    assert code == 0
    lines = out.splitlines()
    assert f"NORMAL T1         {len(usable):>6}" in lines
    assert "Glioma T1              0  absent" in lines
    for path, reason in unusable.items():
        assert f"  {path}: {reason}" in lines
    assert "  Exports 2021" in lines
    assert "Thumbs.db" not in out and ".DS_Store" not in out and "._" not in out
    assert f"  {CLASS}/scan-\\xff\\xfe.png" not in out  # a usable file
    assert lines[-1] == "Problems: 7 unusable file(s); 1 unknown folder(s)"
    assert main(["check-data", str(root), "--strict"]) == 1


def test_check_data_json_lists_the_same_findings(corpus, capsys):
    root, unusable, usable = corpus

    assert main(["check-data", str(root), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)

    assert {f["path"]: f["reason"] for f in found["unusable_files"]} == unusable
    assert found["total_images"] == len(usable)
    assert found["duplicate_groups"] == []
    normal = next(c for c in found["classes"] if c["class_name"] == CLASS)
    assert normal == {
        "class_name": CLASS,
        "short_name": "NORMAL T1",
        "images": len(usable),
        "status": "",
    }


def test_check_data_on_the_real_sample_is_clean(real_sample, capsys, monkeypatch):
    monkeypatch.chdir(REPO)

    code = main(["check-data", "../shared/real-mri-sample", "--strict"])
    lines = capsys.readouterr().out.splitlines()

    assert code == 0
    assert lines[0] == "Data folder: ../shared/real-mri-sample"
    counts = {line[:16].strip(): line[16:].split() for line in lines[3:20]}
    assert len(counts) == 17
    assert all(v == ["8"] for k, v in counts.items() if not k.startswith("Outros"))
    assert all(
        v == ["0", "absent"] for k, v in counts.items() if k.startswith("Outros")
    )
    assert "total                112" in lines
    for heading in ["Unknown folders", "Unusable files", "Near-duplicate groups"]:
        assert f"{heading}: none" in lines
    assert lines[-1] == "Problems: none"


def _demo_with_bad_files(demo_subset, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(demo_subset, root)
    staging = tmp_path / "staging"
    unusable, usable = build_bad_corpus(staging, tmp_path / "outside")
    for entry in (staging / CLASS).iterdir():
        os.rename(entry, root / CLASS / entry.name)
    return root, unusable, usable


def test_a_folder_with_every_bad_case_trains_with_one_warning(
    demo_subset, tmp_path, caplog, capsys
):
    root, unusable, usable = _demo_with_bad_files(demo_subset, tmp_path)
    run_dir = tmp_path / "run"
    caplog.set_level(logging.WARNING)

    code = main(
        ["train", "--config", str(DEMO_CONFIG), "--data-dir", str(root)]
        + ["--run-dir", str(run_dir), *TINY_RUN]
    )

    assert code == 0, capsys.readouterr().err
    assert (run_dir / "model.keras").is_file()
    with open(run_dir / "unusable_files.csv", encoding="utf-8", newline="") as handle:
        listed = {row["path"]: row["reason"] for row in csv.DictReader(handle)}
    assert listed == unusable
    about_files = [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("neuropath") and "unusable" in r.getMessage()
    ]
    assert about_files == [
        f"Left out {len(unusable)} unusable file(s); the list with reasons is in "
        f"{run_dir / 'unusable_files.csv'}"
    ]
    manifest = {r.path for r in read_manifest(run_dir / "split_manifest.csv")}
    assert set(usable) <= manifest and not set(unusable) & manifest


def test_strict_refuses_to_start_and_leaves_no_run_folder(
    demo_subset, tmp_path, capsys
):
    root, unusable, _ = _demo_with_bad_files(demo_subset, tmp_path)
    run_dir = tmp_path / "run"

    code = main(
        ["train", "--config", str(DEMO_CONFIG), "--data-dir", str(root), "--strict"]
        + ["--run-dir", str(run_dir), *TINY_RUN]
    )
    err = capsys.readouterr().err

    assert code == 2
    assert not run_dir.exists()
    assert f"{len(unusable)} file(s) under" in err
    assert f"neuropath check-data {root}" in err


@pytest.mark.parametrize(
    "class_names, message",
    [
        (
            "reversed",
            "the same 17 classes in another order (output 0 is 'Schwannoma",
        ),
        (
            "sixteen",
            "the model has 16 classes, the data 17; not in the model: Schwannoma T2",
        ),
    ],
)
def test_a_model_with_other_classes_is_refused_before_any_work(
    demo_subset, tmp_path, capsys, class_names, message
):
    names = {
        "reversed": CLASS_NAMES[::-1],
        "sixteen": CLASS_NAMES[:16],
    }[class_names]
    model = NeuropathologyClassifier(
        class_names=names, weights=None, image_size=32, backbone_options={"alpha": 0.35}
    ).save(tmp_path / "other.keras")
    out = tmp_path / "report"

    code = main(
        ["evaluate", "--model", str(model), "--data", str(demo_subset)]
        + ["--out", str(out)]
    )
    err = capsys.readouterr().err

    assert code == 2
    assert message in err
    assert not out.exists()


def test_check_data_finds_everything_in_one_pass(corpus):
    root, unusable, usable = corpus

    check = check_data(root)

    assert len(check.records) == len(usable)
    assert check.problems() == ["7 unusable file(s)"]
    assert check.empty_classes == [] and len(check.absent_classes) == 16


def test_a_reused_manifest_is_checked_for_files_broken_since(demo_subset, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(demo_subset, root)
    first, _ = select_records(load_config(None, [f"data.data_dir={root}"]))
    manifest = tmp_path / "split_manifest.csv"
    write_manifest(first, manifest, CLASS_NAMES)
    broken = root / first[0].path
    broken.write_bytes(broken.read_bytes()[:200])
    reuse = [f"data.data_dir={root}", f"data.manifest={manifest}"]

    records, unusable = select_records(load_config(None, reuse))

    assert unusable == [(first[0].path, "truncated JPEG")]
    assert records == first[1:]
    with pytest.raises(ValueError, match="1 file\\(s\\) under .* cannot be used"):
        select_records(load_config(None, [*reuse, "data.strict=true"]))
