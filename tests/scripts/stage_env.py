"""Prints what a stage process sees (its accelerate variables, threads, argv): a warm stage must see the same."""

import json
import os
import sys

import torch

keys = sorted(k for k in os.environ if k.startswith(("ACCELERATE_", "KMP_", "OMP_")) or k == "PYTHONUNBUFFERED")
print(json.dumps({"env": {k: os.environ[k] for k in keys}, "threads": torch.get_num_threads(),
                  "argv": sys.argv[1:], "name": __name__}))  # fmt: skip
