"""The packs of the coming steps, made by a worker process while this one trains on the current step.

Making a step's packs (decoding PNGs, resizing, augmenting, tokenizing) is plain single-threaded Python
and PIL work: on UniMedVL-tiny it was a third of a CPU step (120 of 338 ms). `data.workers: 1` hands it to
a `torch.utils.data.DataLoader` worker that makes step s+1 (and s+2) while step s runs; 0 makes them in
the training process, one step at a time. A pack is a pure function of (seed, step, pack index)
(`packer.PackMaker`), so a run's losses and weights do not depend on the setting (tested). It pays where
cores are to spare (a GPU host); on a 2-core CPU the model's two threads already fill the machine and
`bench/curriculum_step.py` measured 1.02x, so the default is 0.

On Linux the worker is forked with the pack maker already built (the corpus index is shared copy-on-write,
not read again); where processes are spawned (macOS, Windows) the maker is sent to it once per stage.
Packs come back through the DataLoader's queue; the worker computes with one thread.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from unimedvl.model.packing import PackedBatch
from unimedvl.train.packer import PackMaker

PREFETCH_STEPS = 2  # steps made ahead: enough to hide one slow step, little memory (a step is a few MB)


class _StepPacks(Dataset):
    """Item `step` is this rank's packs of that step."""

    def __init__(self, maker: PackMaker, indices: tuple[int, ...]) -> None:
        self.maker, self.indices = maker, indices

    def __getitem__(self, step: int) -> list[PackedBatch]:
        return [self.maker.make(step, i) for i in self.indices]

    def __len__(self) -> int:  # not used for sampling (the sampler below names the steps)
        return 0


def _as_is(packs: list[PackedBatch]) -> list[PackedBatch]:
    return packs


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)


class PackStream:
    """`packs(step)`: this rank's packs of a step, made ahead by `workers` processes (0: made on demand).

    Steps are expected in order from wherever the run starts or resumes; asking for another step
    (a resume, a test calling steps out of order) restarts the workers there.
    """

    def __init__(self, maker: PackMaker, indices: tuple[int, ...], *, workers: int, last_step: int) -> None:
        self.steps, self.workers, self.last_step = _StepPacks(maker, indices), workers, last_step
        self._iterator: Iterator[list[PackedBatch]] | None = None
        self._next_step: int | None = None

    def packs(self, step: int) -> list[PackedBatch]:
        if self.workers == 0 or step >= self.last_step:
            return self.steps[step]
        if self._iterator is None or self._next_step != step:
            self.close()
            self._iterator = iter(self._loader(step))
        self._next_step = step + 1
        return next(self._iterator)

    def _loader(self, first: int) -> DataLoader:
        return DataLoader(self.steps, batch_size=None, sampler=range(first, self.last_step),
                          num_workers=self.workers, collate_fn=_as_is, prefetch_factor=PREFETCH_STEPS,
                          worker_init_fn=_one_thread)

    def close(self) -> None:
        """Stop the workers (a DataLoader iterator shuts them down when it is released)."""
        self._iterator = None
        self._next_step = None
