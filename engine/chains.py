"""Warm-start chains, one per keyframe, cross-faded so the face does not jump at keyframes.

A chain starts cold at a keyframe (every face projected from scratch) and carries
each face's latent and noise maps to the next frame as a warm start. Restarting at
keyframes bounds drift and makes farm chunks exact, but two chains land on different
latents for the same face, so a hard switch shows as a pop. Instead the old chain
runs ``overlap`` frames past the next keyframe, and those frames show the latent
``(1 - a) * old + a * new`` with ``a`` ramping from ``1 / (V + 1)`` to ``V / (V + 1)``
(:meth:`engine.temporal.TemporalPlan.fading_chain`); noise maps are blended the same
way. A face the old chain does not carry (it appeared in the overlap) shows the new
chain alone. The cost is ``overlap`` extra warm projections per face and keyframe
interval.

Chains exist only from the first frame a run projects: a run that starts projecting
at a keyframe has no older chain, and the plan makes every written frame's chains
start inside the run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Hashable, List, Optional, Tuple

import torch

from .temporal import TemporalPlan

__all__ = ["FaceState", "KeyframeChains", "crossfade"]


@dataclass
class FaceState:
    """What a face carries to the next frame: its projected latent (n_latent, D) and noise maps."""

    latent: torch.Tensor
    noises: List[torch.Tensor]


def crossfade(old: FaceState, new: FaceState, weight: float) -> FaceState:
    """``(1 - weight) * old + weight * new``, latent and noise maps alike."""
    return FaceState(torch.lerp(old.latent, new.latent, weight),
                     [torch.lerp(a, b, weight) for a, b in zip(old.noises, new.noises)])


class KeyframeChains:
    """The chains alive at the current frame and each one's face states from the frame before."""

    def __init__(self, plan: TemporalPlan):
        self.plan = plan
        self.reset()

    def reset(self) -> None:
        self._states: Dict[int, Dict[Hashable, FaceState]] = {}  # chain keyframe -> face key -> state
        self._index: Optional[int] = None

    def begin(self, index: int) -> Tuple[int, Optional[int], float]:
        """Move to frame `index`: (new chain, old chain or None, weight of the new chain).

        Starts the new chain at its keyframe (or at the first frame projected) and ends
        chains that no longer show; a frame that does not follow the last one starts over.
        """
        if self._index is None or index != self._index + 1:
            self._states = {}
        self._index = index
        new = self.plan.chain_of(index)
        fading = self.plan.fading_chain(index)
        old, weight = (fading if fading is not None and fading[0] in self._states else (None, 1.0))
        self._states = {c: s for c, s in self._states.items() if c in (new, old)}
        self._states.setdefault(new, {})
        return new, old, weight

    def state(self, chain: int, key: Hashable) -> Optional[FaceState]:
        """The state a face had in `chain` on the previous frame (None: not carried)."""
        return self._states.get(chain, {}).get(key) if key is not None else None

    def carry(self, chain: int, states: Dict[Hashable, FaceState]) -> None:
        """The chain's face states of the current frame, for the next one."""
        self._states[chain] = states
