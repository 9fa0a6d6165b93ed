"""Teacher caching launcher: ``accelerate launch recipes/cache_teacher.py --config recipes/offline_kd/cache.yaml``.

A thin entry point over ``trl_edge.scripts.cache``, the code ``trl-edge cache`` runs.
"""

from trl_edge.scripts.cache import run

if __name__ == "__main__":
    run()
