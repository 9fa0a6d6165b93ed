"""Offline distillation launcher: ``accelerate launch recipes/offline_kd.py --config recipes/offline_kd/kd.yaml``.

A thin entry point over ``trl_edge.scripts.kd``, the code ``trl-edge kd`` runs.
"""

from trl_edge.scripts.kd import run

if __name__ == "__main__":
    run()
