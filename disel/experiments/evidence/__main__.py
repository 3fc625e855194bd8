"""``python -m disel.experiments.evidence`` = ``disel-evidence``."""

import sys

from .cli import main

sys.exit(main())
