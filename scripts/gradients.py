#!/usr/bin/env python
"""Runs ``neuropath gradients``; see ``neuropath gradients --help``."""

import sys
from pathlib import Path

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from neuropath.cli import gradients_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(gradients_main())
