"""`--threads N` of the train commands: how many CPU threads torch uses in this process."""

from __future__ import annotations

import torch


def use_threads(threads: int | None) -> None:
    """Set torch's CPU threads; None keeps torch's choice (every core). On a machine busy with other work,
    1 is often far faster: torch's threads then wait on each other (calibrate: 20 minutes against 80 s)."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError("--threads must be at least 1.")
    torch.set_num_threads(threads)
