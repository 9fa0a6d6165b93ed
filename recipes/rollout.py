"""Rollout launcher: ``accelerate launch recipes/rollout.py --config recipes/offline_kd/rollout_tiny.yaml``.

A thin entry point over ``trl_edge.scripts.rollout``, the code ``trl-edge rollout`` runs.
"""

from trl_edge.scripts.rollout import run

if __name__ == "__main__":
    run()
