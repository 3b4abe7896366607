"""Class names: canonical order, matching real folder names, short names."""

import unicodedata

from neuropath.classes import (
    CLASS_NAMES,
    canonical_class_name,
    pathology_of,
    sequence_of,
    short_name,
)


def test_there_are_17_classes_in_sorted_folder_order():
    assert len(CLASS_NAMES) == 17
    assert list(CLASS_NAMES) == sorted(CLASS_NAMES)
    assert CLASS_NAMES[6:8] == ("NORMAL T1", "NORMAL T2")
    assert "NORMAL T1C+" not in CLASS_NAMES


def test_every_real_sample_folder_maps_to_itself(real_sample):
    folders = sorted(p.name for p in real_sample.iterdir() if p.is_dir())
    assert len(folders) == 14
    assert [canonical_class_name(f) for f in folders] == folders


def test_nfd_accents_and_case_still_match():
    nfc = "Outros Tipos de Lesões (Abscessos, Cistos, Encefalopatias Diversas) T1C+"
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfd != nfc
    assert canonical_class_name(nfd) == nfc
    assert canonical_class_name(nfc.upper()) == nfc
    assert canonical_class_name("  NORMAL   T2 ") == "NORMAL T2"


def test_unknown_folders_do_not_match():
    assert canonical_class_name("NORMAL T1C+") is None
    assert canonical_class_name("Glioma T1") is None
    assert canonical_class_name("Thumbs") is None


def test_short_names_keep_pathology_and_sequence():
    shorts = [short_name(name) for name in CLASS_NAMES]
    assert len(set(shorts)) == 17
    assert shorts[:3] == ["Glioma T1", "Glioma T1C+", "Glioma T2"]
    assert "Outros T1" in shorts and "Meningioma T1C+" in shorts
    meningioma = CLASS_NAMES[4]
    assert (pathology_of(meningioma), sequence_of(meningioma)) == (
        "Meningioma",
        "T1C+",
    )
