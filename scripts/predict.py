#!/usr/bin/env python
"""Runs ``neuropath predict``; see ``neuropath predict --help``."""

import sys
from pathlib import Path

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from neuropath.cli import predict_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(predict_main())
