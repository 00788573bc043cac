"""The running batch's state: one KV cache for all sequences, left-padded to a common length.

Sequences join between decode steps (their prefilled cache is padded on the
left and concatenated) and leave between steps (their rows are dropped), which
is what iteration-level batching needs. Padding is masked out of attention and
positions are per row, so a sequence's logits do not depend on its neighbours
beyond floating-point noise. Columns that only padding uses are trimmed when the
longest sequence leaves, so a long request does not slow its neighbours after it
is gone.
"""

from collections.abc import Sequence

import torch
from torch.nn import functional
from transformers import DynamicCache

__all__ = ["BatchCache"]


def _tensors(layer: object) -> tuple[torch.Tensor, torch.Tensor]:
    """A full-attention cache layer's keys and values, [batch, kv_heads, seq, head_dim]."""
    keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
    if not isinstance(keys, torch.Tensor) or not isinstance(values, torch.Tensor):
        raise TypeError(f"unsupported cache layer {type(layer).__name__}: continuous batching needs full attention")
    return keys, values


def _left_pad(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """Pad [batch, heads, seq, dim] on the left of `seq` up to `length`."""
    missing = length - tensor.shape[2]
    return functional.pad(tensor, (0, 0, missing, 0)) if missing else tensor


class BatchCache:
    def __init__(self) -> None:
        self.cache: DynamicCache | None = None
        self.mask = torch.zeros(0, 0, dtype=torch.long)  # 1 where a row has a real token
        self.positions = torch.zeros(0, dtype=torch.long)  # next position id of each row

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]

    @property
    def size(self) -> int:
        return int(self.mask.shape[0])

    def add(self, prefilled: DynamicCache, prompt_length: int) -> None:
        """Join a sequence whose prompt was just prefilled on its own; all or nothing."""
        if self.cache is None:
            self.cache = prefilled
            self.mask = torch.ones(1, prompt_length, dtype=torch.long)
            self.positions = torch.tensor([prompt_length])
            return
        length = max(self.mask.shape[1], prompt_length)
        merged = DynamicCache()
        for index, (mine, theirs) in enumerate(zip(self.cache.layers, prefilled.layers, strict=True)):
            (my_keys, my_values), (their_keys, their_values) = _tensors(mine), _tensors(theirs)
            keys = torch.cat([_left_pad(my_keys, length), _left_pad(their_keys, length)])
            values = torch.cat([_left_pad(my_values, length), _left_pad(their_values, length)])
            merged.update(keys, values, index)
        row = functional.pad(torch.ones(1, prompt_length, dtype=torch.long), (length - prompt_length, 0))
        mask = torch.cat([functional.pad(self.mask, (length - self.mask.shape[1], 0)), row])
        positions = torch.cat([self.positions, torch.tensor([prompt_length])])
        # Assigned together once everything is built: a failure above leaves the batch as it was.
        self.cache, self.mask, self.positions = merged, mask, positions

    def step_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention mask and position ids for one decode step of every row."""
        self.mask = functional.pad(self.mask, (0, 1), value=1)
        return self.mask, self.positions[:, None]

    def advance(self) -> None:
        self.positions = self.positions + 1

    def keep(self, rows: Sequence[int]) -> None:
        """Drop every row not in `rows`, then the columns no remaining row uses."""
        if len(rows) == self.size:
            return
        if not rows:
            self.clear()
            return
        assert self.cache is not None
        index = torch.tensor(list(rows))
        self.mask = self.mask.index_select(0, index)
        self.positions = self.positions.index_select(0, index)
        used = int(self.mask.any(dim=0).to(torch.long).argmax())  # first column some row uses
        self.mask = self.mask[:, used:]
        for layer in self.cache.layers:
            keys, values = _tensors(layer)
            layer.keys = keys.index_select(0, index)[:, :, used:]  # type: ignore[union-attr]
            layer.values = values.index_select(0, index)[:, :, used:]  # type: ignore[union-attr]
