"""The training loop's schedule (steps per epoch, step budget, when to validate) and its plain-words verdict."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pixelperfect.training.recipe import TrainConfig, default_epochs

#: Default validation interval: whole epochs, at least this many optimizer steps. On a tiny set an epoch is a few
#: steps, and validating after each would let ``patience`` validations end training before it has started (24
#: phantoms: 4 steps an epoch, stopped after 20-25 steps with the Dice unchanged).
MIN_VAL_STEPS = 20
#: A best validation Dice less than this above the Dice before training counts as "did not improve" (noise).
MIN_IMPROVEMENT = 0.01


@dataclass(frozen=True)
class Schedule:
    """Steps per epoch, the step budget, and every how many steps validation runs."""

    per_epoch: int
    total: int
    val_every: int

    @classmethod
    def of(cls, config: TrainConfig, n_train: int) -> Schedule:
        per_epoch = math.ceil(n_train / config.batch_size)
        total = (config.epochs or default_epochs(config.model)) * per_epoch
        total = total if config.max_steps is None else min(total, config.max_steps)
        default = per_epoch * math.ceil(MIN_VAL_STEPS / per_epoch)
        return cls(per_epoch, total, config.val_every or default)

    def validates(self, step: int) -> bool:
        return step % self.val_every == 0 or step == self.total

    def epoch_of(self, step: int) -> int:
        """The 1-based epoch the ``step``-th optimizer step belongs to."""
        return (step - 1) // self.per_epoch + 1


def no_improvement_warning(st: dict[str, Any], config: TrainConfig) -> str | None:
    """A plain sentence when no validation beat the Dice before training by :data:`MIN_IMPROVEMENT` (``None`` when
    one did, or before any validation): what happened and what to try."""
    curve = st["curve"]
    if not curve or st["best"] >= st["before"] + MIN_IMPROVEMENT:
        return None
    how = "stopped early" if st["stopped"] else "ran to its step budget"
    every = st.get("val_every", config.val_every)
    return (
        f"validation Dice did not improve: {st['before']:.3f} before training, best {st['best']:.3f} over "
        f"{len(curve)} validation(s) in {st['step']} step(s); training {how} (lr {config.learning_rate:g}, patience "
        f"{config.patience}, validation every {every} steps). Try a larger --lr (a random model such as sam_tiny "
        "needs ~1e-3), more --max-steps or --epochs, a larger --patience or --val-every, more labelled images, or "
        "check that the masks match the images and their prompts."
    )
