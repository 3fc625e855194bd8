"""``python -m disel.experiments`` = ``disel-train`` (also what ``accelerate launch -m`` / ``torchrun -m`` run)."""

import sys

from .cli.train import main

sys.exit(main())
