"""Records what accelerate made of its launch, for ``test_fsdp2.py``: ``python accelerate_probe.py CPU DIR``
under ``accelerate launch`` writes one JSON file per process into DIR (CPU = 1: ``Accelerator(cpu=True)``, as
the Trainer builds it for ``use_cpu: true``)."""

import json
import os
import sys
from pathlib import Path

from accelerate import Accelerator

accelerator = Accelerator(cpu=sys.argv[1] == "1")
record = {
    "distributed_type": str(accelerator.distributed_type).split(".")[-1],
    "num_processes": accelerator.num_processes,
    "fsdp2": accelerator.is_fsdp2,
}
(Path(sys.argv[2]) / f"process_{os.getpid()}.json").write_text(json.dumps(record))
