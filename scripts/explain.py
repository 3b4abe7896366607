#!/usr/bin/env python
"""Runs ``neuropath explain``; see ``neuropath explain --help``."""

import sys
from pathlib import Path

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from neuropath.cli import explain_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(explain_main())
