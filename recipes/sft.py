"""Curriculum SFT launcher: ``accelerate launch recipes/sft.py --config recipes/curriculum_sft/two_stage.yaml``.

A thin entry point over ``trl_edge.scripts.sft``, the code ``trl-edge sft`` runs.
"""

from trl_edge.scripts.sft import run

if __name__ == "__main__":
    run()
