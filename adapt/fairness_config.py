"""The recipe's ``train.fairness`` and ``train.guard`` sections (see docs/fairness.md).

``train.fairness`` adds a fairness objective to every labelled-source loss of the one
loop (:mod:`adapt.fairness`); ``train.guard`` watches a metric on the source validation
split every epoch and rolls back or stops when it degrades (:mod:`adapt.guard`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from adapt.method_options import RecipeSection

FairnessObjectiveName = Literal["group_dro", "equalized_odds", "demographic_parity"]
FairnessSelection = Literal["source_val_accuracy", "worst_group_accuracy"]
GuardMetric = Literal["worst_group_accuracy", "eo_difference", "source_val_accuracy"]


class FairnessConfig(RecipeSection):
    """``train.fairness: {objective, group, weight, step_size, adjustment, selection}``.

    group_dro (Sagawa et al., ICLR 2020): the online group-DRO loss over the groups
    (``group`` value x class), group weights q updated with step size ``step_size`` (eta);
    equalized_odds / demographic_parity: the mean cross-entropy plus ``weight`` times a
    differentiable gap between the groups' mean predicted probabilities.
    """

    objective: FairnessObjectiveName
    #: the domain's group column (a CSV group column; the phantom's ``scanner`` with ``minority``)
    group: str = Field(min_length=1)
    #: the penalty's weight (equalized_odds / demographic_parity only; default 1)
    weight: float | None = Field(None, ge=0, le=1000)
    #: group DRO's step size eta for the group weights (group_dro only)
    step_size: float = Field(0.01, gt=0, le=10)
    #: group DRO's generalization adjustment C (Sagawa et al., section 3.3): the group
    #: weights are updated with L_g + C / sqrt(n_g), n_g the cell's training images
    adjustment: float = Field(0.0, ge=0, le=100)
    #: how the source stage picks its epoch on the source validation split:
    #: source_val_accuracy (the average) or worst_group_accuracy (the smallest
    #: (group x class) cell accuracy, ties broken by the average: Sagawa et al.'s protocol)
    selection: FairnessSelection = "source_val_accuracy"

    @model_validator(mode="after")
    def _weight_for_penalties(self) -> FairnessConfig:
        if self.objective == "group_dro" and self.weight is not None:
            raise ValueError("weight is not used by group_dro (its knob is step_size)")
        if self.objective != "group_dro" and self.adjustment:
            raise ValueError(f"adjustment is group DRO's; {self.objective} does not use it (its knob is weight)")
        return self

    @property
    def penalty_weight(self) -> float:
        return 1.0 if self.weight is None else self.weight


class GuardConfig(RecipeSection):
    """``train.guard: {metric, max_drop, action, group, z}``: see :mod:`adapt.guard`."""

    metric: GuardMetric
    #: the largest tolerated degradation beyond noise (accuracy points as a fraction, or a
    #: rise of the equalized-odds difference)
    max_drop: float = Field(0.02, ge=0, le=1)
    #: rollback: end training with the weights of the guard's reference epoch; stop: end
    #: training, keeping the usual selection among the epochs run
    action: Literal["rollback", "stop"] = "rollback"
    #: the group column (default: train.fairness.group)
    group: str | None = Field(None, min_length=1)
    #: the noise allowance: a drop trips only beyond max_drop + z standard errors
    z: float = Field(2.0, ge=0, le=10)
