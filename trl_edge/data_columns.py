"""A dataset's columns as trl-edge's writers read and store them: token lists as flat arrays, the user's own columns
(a curriculum stage label, an id) that travel with every sample, and Arrow IPC bytes for storing a table on disk."""

from __future__ import annotations

import io

import numpy as np

# Columns TRL reads or writes while preparing data: never passed through as a sample's own column.
TRL_COLUMNS = frozenset(
    ("prompt", "completion", "messages", "text", "input_ids", "labels", "attention_mask", "completion_mask",
     "assistant_masks", "seq_lengths", "position_ids", "chosen", "rejected", "images", "tools")
)  # fmt: skip


def ragged_column(dataset, column: str) -> tuple[np.ndarray, np.ndarray]:
    """A list column as ``(values, offsets)`` numpy arrays, straight from Arrow (no Python list per row)."""
    import pyarrow as pa

    if dataset._indices is not None:
        dataset = dataset.flatten_indices()
    array = dataset.data.column(column)
    array = array.combine_chunks() if array.num_chunks else pa.array([], pa.list_(pa.int32()))
    offsets = array.offsets.to_numpy().astype(np.int64)
    return array.flatten().to_numpy(zero_copy_only=False), offsets - offsets[0]


def scalar_column(dataset, column: str) -> np.ndarray:
    """A column of one value per row as a numpy array, straight from Arrow: ``np.asarray(dataset[column])`` builds a
    Python object per row (seconds at a million rows)."""
    return dataset.with_format("arrow")[column].to_numpy()


def passthrough_columns(dataset, exclude=()) -> list[str]:
    """The dataset's own scalar columns (a stage label, a difficulty, an id) that should travel with each sample."""
    from datasets import Value

    skip = TRL_COLUMNS | set(exclude)
    return [name for name, feature in dataset.features.items() if name not in skip and isinstance(feature, Value)]


def table_bytes(columns: dict) -> bytes:
    """Arrow IPC file bytes of a table given as ``{name: list or array}``."""
    import pyarrow as pa

    table = pa.table(columns)
    sink = io.BytesIO()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def read_table(data: bytes):
    """The table of Arrow IPC file bytes."""
    import pyarrow as pa

    return pa.ipc.open_file(pa.py_buffer(data)).read_all()
