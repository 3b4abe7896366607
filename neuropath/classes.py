"""The 17 classes of the public brain-tumour MRI data set and their names.

A *class name* is the data set's folder name (long, Portuguese, with accents
and a ``+``); a *short name* is the label shown in figures (``Glioma T1C+``).
The canonical class order is the sorted list of folder names.
"""

from __future__ import annotations

import unicodedata

__all__ = [
    "CLASS_NAMES",
    "SEQUENCES",
    "canonical_class_name",
    "normalize_name",
    "pathology_of",
    "sequence_of",
    "short_name",
]

_PATHOLOGY_FOLDERS = {
    "Glioma": (
        "Glioma (Astrocitoma, Ganglioglioma, Glioblastoma, "
        "Oligodendroglioma, Ependimoma)"
    ),
    "Meningioma": "Meningioma (de Baixo Grau, Atípico, Anaplásico, Transicional)",
    "Neurocitoma": "Neurocitoma (Central - Intraventricular, Extraventricular)",
    "Outros": "Outros Tipos de Lesões (Abscessos, Cistos, Encefalopatias Diversas)",
    "Schwannoma": "Schwannoma (Acustico, Vestibular - Trigeminal)",
}

SEQUENCES = ("T1", "T1C+", "T2")


def normalize_name(name: str) -> str:
    """Returns ``name`` in Unicode NFC with runs of white space collapsed.

    File systems hand out accented folder names in NFC (Linux, Windows) or NFD
    (macOS exports, some zip tools); comparing normalized names makes
    ``Lesões`` match whichever way it was written.
    """
    return " ".join(unicodedata.normalize("NFC", name).split())


def _all_class_names() -> tuple[str, ...]:
    names = [
        f"{folder} {sequence}"
        for folder in _PATHOLOGY_FOLDERS.values()
        for sequence in SEQUENCES
    ]
    # There is no contrast-enhanced class for normal brains.
    names += ["NORMAL T1", "NORMAL T2"]
    return tuple(sorted(normalize_name(name) for name in names))


CLASS_NAMES: tuple[str, ...] = _all_class_names()

_BY_KEY = {normalize_name(name).casefold(): name for name in CLASS_NAMES}


def canonical_class_name(folder_name: str) -> str | None:
    """Maps a folder name to its canonical class name.

    Args:
        folder_name: a class folder's name as found on disk, in any Unicode
            normalization form and letter case.

    Returns:
        The matching entry of `CLASS_NAMES`, or ``None`` for a folder that is
        not one of the 17 classes.
    """
    return _BY_KEY.get(normalize_name(folder_name).casefold())


def sequence_of(class_name: str) -> str:
    """Returns the MRI sequence of a class: ``"T1"``, ``"T1C+"`` or ``"T2"``."""
    sequence = class_name.rsplit(" ", 1)[-1]
    if sequence not in SEQUENCES:
        raise ValueError(
            f"Class name {class_name!r} does not end with a sequence; "
            f"expected one of {SEQUENCES}."
        )
    return sequence


def pathology_of(class_name: str) -> str:
    """Returns the pathology group of a class, e.g. ``"Glioma"`` or ``"NORMAL"``."""
    return normalize_name(class_name).split(" ", 1)[0]


def short_name(class_name: str) -> str:
    """Returns the display name of a class, e.g. ``"Outros T1"``."""
    return f"{pathology_of(class_name)} {sequence_of(class_name)}"
