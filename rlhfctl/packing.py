"""Shared-prefix packing: sequences that start alike share a row, and their common prefix is computed once.

A group of sequences with a common prefix (a chosen and a rejected response
to one prompt; the n responses to a prompt) is laid out in one row as

    prefix | rest of sequence 1 | rest of sequence 2 | ... | pad

with a 4-D attention mask under which each token sees, causally, the prefix
and the earlier tokens of its own sequence and nothing else, and with each
token at the position it has in its own sequence. Every real token's output
is then that of its sequence run alone (up to float rounding), while the
forward pass spends nothing on a second copy of the prefix and almost
nothing on padding: the rows of a batch differ in width far less than the
sequences do.

The mask is dense, so attention costs grow with the row width squared; a
group is split over several rows when it would exceed ``width_budget``
(default: twice the longest sequence), which keeps that cost small next to
the saved tokens. Only attention kernels that take an arbitrary mask can run
a packed batch: SDPA and eager (`supports_packing`); flash-attention models
use padded batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rlhfctl.console import log

PACKABLE_ATTENTION = ("sdpa", "eager")


@dataclass
class Packed:
    """N sequences packed into R rows of width W."""

    input_ids: torch.Tensor  # (R, W)
    position_ids: torch.Tensor  # (R, W) each token's position in its own sequence
    allowed: torch.Tensor  # (R, 1, W, W) bool: query i may attend to key j
    row: torch.Tensor  # (N,) the row of each sequence
    columns: torch.Tensor  # (N, Lmax) the column of token p of each sequence; past its end, its last column
    lengths: torch.Tensor  # (N,)

    def attention_mask(self, implementation: str = "sdpa", dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The mask in the form the attention kernel reads: boolean for SDPA, additive for eager."""
        if implementation == "eager":
            return torch.zeros(self.allowed.shape, dtype=dtype, device=self.allowed.device).masked_fill(
                ~self.allowed, torch.finfo(dtype).min)
        return self.allowed

    def last_columns(self) -> torch.Tensor:
        """(N,) the column of each sequence's last token."""
        return self.columns.gather(1, (self.lengths - 1)[:, None]).squeeze(1)

    def at(self, outputs: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``outputs`` (R, W, ...) read at token ``positions`` (N, T) of each sequence -> (N, T, ...).

        Positions past a sequence's end (or before its start) read its last (first) token.
        """
        positions = positions.clamp(min=0).minimum(self.lengths[:, None] - 1)
        return outputs[self.row[:, None], self.columns.gather(1, positions)]

    def to(self, device) -> "Packed":
        return Packed(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def common_prefix(seqs: list[list[int]]) -> int:
    """Length of the longest prefix all of ``seqs`` share, leaving each at least one token of its own."""
    limit = min(len(s) for s in seqs) - 1
    first = seqs[0]
    n = 0
    while n < limit and all(s[n] == first[n] for s in seqs[1:]):
        n += 1
    return n


def pack(seqs: list[list[int]], groups: list[Any], pad_id: int, width_budget: int | None = None) -> Packed:
    """Pack ``seqs`` (each non-empty) so that sequences with the same ``groups`` key share their common prefix.

    Rows come in the order of each group's first sequence; within a row, the
    sequences keep their input order.
    """
    if len(seqs) != len(groups) or not seqs or any(not s for s in seqs):
        raise ValueError("pack needs one group key per sequence and non-empty sequences")
    budget = width_budget or 2 * max(len(s) for s in seqs)
    members: dict[Any, list[int]] = {}
    for i, key in enumerate(groups):
        members.setdefault(key, []).append(i)
    layout: list[tuple[int, list[int]]] = []  # (shared prefix length, sequence indices) per row
    for idx in members.values():
        shared = common_prefix([seqs[i] for i in idx])
        row: list[int] = []
        width = shared
        for i in idx:
            own = len(seqs[i]) - shared
            if row and width + own > budget:
                layout.append((shared, row))
                row, width = [], shared
            row.append(i)
            width += own
        layout.append((shared, row))
    return _lay_out(seqs, layout, pad_id)


def _lay_out(seqs: list[list[int]], layout: list[tuple[int, list[int]]], pad_id: int) -> Packed:
    widths = [shared + sum(len(seqs[i]) - shared for i in row) for shared, row in layout]
    rows, width, longest = len(layout), max(widths), max(len(s) for s in seqs)
    ids = torch.full((rows, width), pad_id, dtype=torch.long)
    positions = torch.zeros((rows, width), dtype=torch.long)
    segment = torch.full((rows, width), -1, dtype=torch.long)  # 0: the shared prefix, k: the k-th sequence's own tokens, -1: pad
    seq_row = torch.zeros(len(seqs), dtype=torch.long)
    columns = torch.zeros((len(seqs), longest), dtype=torch.long)
    for r, (shared, members) in enumerate(layout):
        first = seqs[members[0]]
        ids[r, :shared] = torch.tensor(first[:shared], dtype=torch.long)
        positions[r, :shared] = torch.arange(shared)
        segment[r, :shared] = 0
        col = shared
        for k, i in enumerate(members, start=1):
            own = seqs[i][shared:]
            ids[r, col:col + len(own)] = torch.tensor(own, dtype=torch.long)
            positions[r, col:col + len(own)] = torch.arange(shared, len(seqs[i]))
            segment[r, col:col + len(own)] = k
            seq_row[i] = r
            columns[i, :shared] = torch.arange(shared)
            columns[i, shared:len(seqs[i])] = torch.arange(col, col + len(own))
            columns[i, len(seqs[i]):] = col + len(own) - 1
            col += len(own)
    order = torch.arange(width)
    query, key = segment[:, :, None], segment[:, None, :]
    allowed = (order[None, None, :] <= order[None, :, None]) & ((key == 0) | (key == query)) & (query >= 0)
    allowed |= torch.eye(width, dtype=torch.bool)[None] & (query < 0)  # a pad sees itself only: no empty softmax row
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    return Packed(ids, positions, allowed[:, None], seq_row, columns, lengths)


def attention_implementation(model: Any) -> str | None:
    """The attention kernel a (possibly wrapped) transformers model runs: 'sdpa', 'eager', ..."""
    seen = 0
    while model is not None and seen < 8:
        config = getattr(model, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            return config._attn_implementation
        model = next((getattr(model, a) for a in ("module", "model", "policy") if getattr(model, a, None) is not None), None)
        seen += 1
    return None


def supports_packing(model: Any) -> bool:
    return attention_implementation(model) in PACKABLE_ATTENTION


def use_packing(requested: bool, model: Any, command: str, main: bool = True) -> bool:
    """Whether ``command`` packs: asked for, and ``model``'s attention kernel takes the mask; says so when it cannot."""
    if requested and not supports_packing(model):
        log(f"{command}: padded batches (the {attention_implementation(model)} attention kernel takes no packing mask)", main)
        return False
    return requested
