"""Fresh random starts of a model, for runs that replace a start which goes wrong early
(AutoLink's and the skeleton model's ``restart_step``; AutoLink's ``init_candidates``).

A model mixes in ``FreshStarts``, calls ``register_starts`` in its constructor and defines
``fresh_copy()`` (a new instance of itself, same config, weights from the global RNG). Start
k >= 1 is then the fresh copy built from seed ``candidate_seed + k``; start 0 is the run's own.
The bookkeeping lives in buffers, so that DDP hands every rank rank 0's and a checkpoint
resumes it: ``candidate_seed``, ``init_choice`` (the start trained; -1 until chosen),
``start_step`` (the step it began) and ``restarts``. ``restarted_at`` (not saved) tells the
training loop to clear the optimiser's moments at that step (kpray.train.loop).

A start that is replaced can be shelved first (``shelve``: its weights and its score, in memory
only); once the restarts run out, ``return_to_best`` loads the best shelved start instead of
keeping a last start that scores lower. A run resumed from a checkpoint has an empty shelf.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

START_BUFFERS = ("candidate_seed", "init_choice", "start_step", "restarts")


def print_on_rank0(message: str) -> None:
    """Print (flushed) once per run: on DDP rank 0, or always when not distributed."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()) \
            or torch.distributed.get_rank() == 0:
        print(message, flush=True)


def rank_mean(x: torch.Tensor) -> torch.Tensor:
    """x averaged over DDP ranks (x itself when not distributed), so that every rank decides
    alike."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        x = x.clone()
        torch.distributed.all_reduce(x)
        x /= torch.distributed.get_world_size()
    return x


class FreshStarts:
    """Mixin for an nn.Module: see the module docstring."""

    restarted_at: int | None = None
    shelf: tuple[float, dict] | None = None       # (score, state dict) of the best replaced start

    def register_starts(self: nn.Module, chosen: bool = True) -> None:
        """Register the buffers. The seed of the other starts is drawn on a forked RNG, so the
        run's own start (and whatever the run draws after it) is that of the same run without
        fresh starts. chosen=False: ``init_choice`` starts at -1 (a choice at step 0 follows)."""
        with torch.random.fork_rng(devices=[]):
            seed = torch.randint(2 ** 31 - 1, ())
        self.register_buffer("candidate_seed", seed)
        self.register_buffer("init_choice", torch.full((), 0 if chosen else -1))
        self.register_buffer("start_step", torch.zeros((), dtype=torch.long))
        self.register_buffer("restarts", torch.zeros((), dtype=torch.long))
        self.restarted_at = None
        self.shelf = None

    def fresh_copy(self) -> nn.Module:
        raise NotImplementedError

    def began(self) -> int:
        """The training step the current start began at: 0, or the step of the last restart."""
        return int(self.start_step) if hasattr(self, "start_step") else 0

    def candidate_state(self: nn.Module, k: int) -> dict:
        """The state dict of random start ``k`` >= 1 (``fresh_copy`` built from seed
        ``candidate_seed + k``; the global RNG is left as it was). The buffers that say which
        start is trained are kept."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.candidate_seed) + k)
            state = self.fresh_copy().state_dict()
        for name in START_BUFFERS:
            state[name] = getattr(self, name)
        return state

    @torch.no_grad()
    def restart(self: nn.Module, k: int, step: int, why: str, most: int) -> None:
        """Load start ``k`` in place (an optimiser and DDP built on this module keep its
        parameters), count the restart, and mark ``step`` as its beginning (``start_step``,
        ``init_choice``, ``restarted_at``). ``why`` and ``most`` (the allowed restarts) go into
        the one-line message."""
        self.load_state_dict(self.candidate_state(k))
        self.restarts += 1
        self.start_step.fill_(step)
        self.init_choice.fill_(k)
        self.restarted_at = step
        print_on_rank0(f"restart at step {step}: {why}; start {k} "
                       f"(restart {int(self.restarts)} of at most {most})")

    @torch.no_grad()
    def shelve(self: nn.Module, score: float) -> None:
        """Keep a copy of the current start (weights and buffers) if ``score`` beats the start on
        the shelf (higher is better); call it before ``restart`` replaces the start."""
        if self.shelf is None or score > self.shelf[0]:
            self.shelf = (score, copy.deepcopy(self.state_dict()))

    @torch.no_grad()
    def return_to_best(self: nn.Module, score: float, step: int) -> bool:
        """If the shelved start scored higher than ``score`` (the current start's), load it in
        place as it was when shelved, with ``restarts`` left as it is, and mark ``step`` for the
        optimiser (``restarted_at``); its ``start_step`` is its own, so no later decision falls
        due. Returns whether it did."""
        if self.shelf is None or not self.shelf[0] > score:
            return False
        best, state = self.shelf
        restarts = self.restarts.clone()
        self.load_state_dict(state)
        self.restarts.copy_(restarts)
        self.restarted_at = step
        print_on_rank0(f"step {step}: back to start {int(self.init_choice)} as it was at its "
                       f"decision; it scored {best:.3f}, the last start {score:.3f}")
        return True
