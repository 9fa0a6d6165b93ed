"""Load the dataset a script names: a hub name, a local folder of data files, or a ``save_to_disk`` folder."""

from __future__ import annotations

import os


def load_dataset_dict(name: str | None, config: str | None = None, streaming: bool = False, split: str = "train"):
    """A ``DatasetDict`` for ``name``; a single saved ``Dataset`` comes back as ``{split: dataset}``."""
    from datasets import DatasetDict, load_dataset, load_from_disk

    if not name:
        raise ValueError("No dataset: name one (a hub name, a local data folder, or a `save_to_disk` folder).")
    saved = os.path.isdir(name) and any(
        os.path.exists(os.path.join(name, marker)) for marker in ("dataset_dict.json", "state.json")
    )
    if saved:
        dataset = load_from_disk(name)
        return dataset if isinstance(dataset, DatasetDict) else DatasetDict({split: dataset})
    return load_dataset(name, name=config, streaming=streaming)
