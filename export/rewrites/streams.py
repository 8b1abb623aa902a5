"""Streams: a stage's channels carried as separate tensors, contiguous ranges in channel order.

GDBlocks are depthwise and their residual adds are per channel, so a stage's channels never mix
before its Aggregator. The dilation lowering turns each GDBlock into one depthwise conv per stream;
keeping the streams as separate tensors from the stage input to the Aggregator means no
Split/Concat per block. The stem (stage 0) or the GRN in front (later stages) hands each stage its
input already cut into that stage's streams, and the Aggregator concatenates them once.
"""

from typing import List, Sequence

import torch

Streams = List[torch.Tensor]


def cat_streams(streams: Streams) -> torch.Tensor:
    """The streams as one tensor (no Concat node for a single stream)."""
    return torch.cat(streams, dim=1) if len(streams) > 1 else streams[0]


def stream_bounds(sizes: Sequence[int]) -> List[int]:
    """Channel offsets ``[0, s0, s0 + s1, ..., C]`` of streams of ``sizes`` channels."""
    bounds = [0]
    for size in sizes:
        bounds.append(bounds[-1] + int(size))
    return bounds
