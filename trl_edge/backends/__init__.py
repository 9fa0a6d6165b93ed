"""Who runs a model over many sequences: scoring them (teacher caching, difficulty) and sampling from it (rollouts).

``transformers_backend`` runs a ``PreTrainedModel`` in batches on the accelerator; ``vllm_backend`` (optional extra
``vllm``) hands every sequence to one ``vllm.LLM`` call. It is the only module that imports vLLM.
"""

BACKENDS = ("transformers", "vllm")


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"Unknown backend {name!r}; choose one of {', '.join(BACKENDS)}.")
    if name == "vllm":
        from .vllm_backend import require_vllm

        require_vllm()  # before any work: fail at once where vLLM is absent
    return name
