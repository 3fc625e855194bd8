"""``python -m disel.experiments.study`` = ``disel-evidence``."""

import sys

from .cli import main

sys.exit(main())
