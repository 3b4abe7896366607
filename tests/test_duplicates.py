"""Near-duplicate slices are found, reported and kept inside one split."""

import io
import shutil
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image

from neuropath.classes import CLASS_NAMES
from neuropath.config import load_config
from neuropath.data_check import check_data, format_data_check
from neuropath.dataset import (
    read_manifest,
    scan_dataset,
    split_records,
    write_manifest,
)
from neuropath.duplicates import (
    assign_duplicate_groups,
    group_near_duplicates,
    perceptual_hash,
)
from neuropath.training import select_records

# Four slices of four classes, each re-exported three ways.
COPIED = 4


def _reexport(source, folder, stem):
    """A half-size JPEG at quality 60, a 1.5x PNG and a JPEG of a 90% crop-resize."""
    image = Image.open(source).convert("RGB")
    width, height = image.size
    folder.mkdir(parents=True, exist_ok=True)
    image.resize((width // 2, height // 2), Image.BILINEAR).save(
        folder / f"{stem}-small.jpg", quality=60
    )
    image.resize((width * 3 // 2, height * 3 // 2), Image.LANCZOS).save(
        folder / f"{stem}-large.png"
    )
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=75)
    Image.open(buffer).save(folder / f"{stem}-again.jpg", quality=90)
    return [f"{stem}-small.jpg", f"{stem}-large.png", f"{stem}-again.jpg"]


@pytest.fixture
def real_with_copies(real_sample, tmp_path):
    """The real sample plus re-exported copies of one slice in four classes."""
    root = tmp_path / "data"
    shutil.copytree(real_sample, root)
    copies = {}
    for class_name in CLASS_NAMES[:COPIED]:
        folder = root / class_name
        original = sorted(folder.iterdir())[0]
        names = _reexport(original, folder / "re-export", "copy")
        copies[f"{class_name}/{original.name}"] = [
            f"{class_name}/re-export/{n}" for n in names
        ]
    return root, copies


def test_resized_and_reencoded_copies_form_one_group_each(real_with_copies):
    root, copies = real_with_copies

    records = assign_duplicate_groups(scan_dataset(root).records, root)

    groups = defaultdict(set)
    for record in records:
        if record.duplicate_group is not None:
            groups[record.duplicate_group].add(record.path)
    assert sorted(map(sorted, groups.values())) == sorted(
        sorted([original, *names]) for original, names in copies.items()
    )


def test_groups_stay_inside_one_split_unless_allowed(real_with_copies):
    root, copies = real_with_copies
    records = assign_duplicate_groups(scan_dataset(root).records, root)

    def splits_of_groups(split):
        by_path = {r.path: r.split for r in split}
        return [
            {by_path[p] for p in [original, *names]}
            for original, names in copies.items()
        ]

    kept = split_records(records, 0.15, 0.15, seed=42)
    mixed = split_records(records, 0.15, 0.15, seed=42, keep_duplicates_together=False)

    assert all(len(splits) == 1 for splits in splits_of_groups(kept))
    # Image by image, copies of one slice leak across splits.
    assert any(len(splits) > 1 for splits in splits_of_groups(mixed))
    # The class balance holds: 11 or 12 images per class, 1 or 2 held out each.
    for class_name in CLASS_NAMES[:COPIED]:
        held_out = [
            r for r in kept if r.class_name == class_name and r.split != "train"
        ]
        assert 2 <= len(held_out) <= 5


def test_manifest_records_the_group_of_each_image(real_with_copies, tmp_path):
    root, copies = real_with_copies
    records = split_records(assign_duplicate_groups(scan_dataset(root).records, root))

    path = write_manifest(records, tmp_path / "split_manifest.csv", CLASS_NAMES)
    again = read_manifest(path)

    assert again == records
    grouped = {r.path: r.duplicate_group for r in again if r.duplicate_group}
    assert len(grouped) == 4 * COPIED and len(set(grouped.values())) == COPIED
    assert sum(r.duplicate_group is None for r in again) == 112 - COPIED


def test_check_data_reports_groups_and_a_slice_under_two_labels(real_sample, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(real_sample, root)
    source = sorted((root / CLASS_NAMES[0]).iterdir())[0]
    _reexport(source, root / CLASS_NAMES[5], "mislabelled")

    check = check_data(root)
    text = format_data_check(check)

    assert len(check.groups) == 1 and len(check.groups[0]) == 4
    assert "Near-duplicate groups: 1" in text
    assert f"    {CLASS_NAMES[0]}/{source.name} (Glioma T1)" in text
    assert check.problems() == ["1 duplicate group(s) spanning two classes"]


def test_chains_of_near_duplicates_are_one_group():
    rng = np.random.default_rng(0)
    a = rng.random(256) < 0.5
    b, c, far = a.copy(), a.copy(), ~a
    b[:6] = ~b[:6]  # 6 bits from a
    c[:12] = ~c[:12]  # 6 bits from b, 12 from a

    groups = group_near_duplicates(np.stack([a, far, b, c]), max_distance=8)

    assert groups.tolist() == [0, 1, 0, 0]


def test_distinct_real_slices_are_not_grouped(real_sample):
    records = assign_duplicate_groups(scan_dataset(real_sample).records, real_sample)
    assert all(r.duplicate_group is None for r in records)
    assert perceptual_hash(np.zeros((40, 40, 3), np.uint8)).shape == (256,)


def test_training_splits_by_group_and_the_option_turns_it_off(real_with_copies):
    root, copies = real_with_copies
    tiny = [f"data.data_dir={root}"]

    kept, _ = select_records(load_config(None, tiny))
    mixed, _ = select_records(
        load_config(None, [*tiny, "data.allow_cross_split_duplicates=true"])
    )

    for records, together in [(kept, True), (mixed, False)]:
        by_group = defaultdict(set)
        for r in records:
            if r.duplicate_group is not None:
                by_group[r.duplicate_group].add(r.split)
        assert len(by_group) == COPIED
        assert all(len(s) == 1 for s in by_group.values()) is together
