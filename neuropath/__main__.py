"""Allows ``python -m neuropath``."""

import sys

from neuropath.cli import main

sys.exit(main())
