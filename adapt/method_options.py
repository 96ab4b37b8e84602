"""The recipe's per-method options: one section per adaptation method, each under the
run's key of the same name (``dann:``, ``cdan:``, ``mcc:``, ``coral:``, ``dan:``, ``shot:``,
``ewc:``), and the objective families the pipeline treats alike. Part of the recipe
schema (:mod:`adapt.recipe` re-exports every name).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from adapt.data.spec import reject_bool_for_number


class RecipeSection(BaseModel):
    """Every recipe section rejects unknown keys (typos must not pass silently) and
    non-finite numbers (``lr: .inf`` or ``1e400`` is a typo, never a setting)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        return reject_bool_for_number(cls, value, info)


class DANNConfig(RecipeSection):
    #: maximum weight of the domain loss; the paper's ramp 2/(1+exp(-10p))-1 scales it
    weight: float = Field(0.3, ge=0)
    hidden: int = Field(256, ge=1, le=65536)
    depth: int = Field(2, ge=1, le=8)


class CDANConfig(RecipeSection):
    #: maximum GRL coefficient (ramped as DANN's)
    weight: float = Field(1.0, ge=0)
    #: CDAN+E: weight each sample's domain loss by 1 + exp(-entropy of its prediction)
    entropy: bool = False
    #: output size of the randomised multilinear map, used when classes x features > max_multilinear_dim
    randomized_dim: int = Field(1024, ge=1, le=65536)
    max_multilinear_dim: int = Field(4096, ge=1, le=1 << 20)
    hidden: int = Field(256, ge=1, le=65536)
    depth: int = Field(2, ge=1, le=8)


class MCCConfig(RecipeSection):
    #: mu, the weight of the class-confusion loss
    weight: float = Field(1.0, ge=0)
    #: softmax temperature of the target predictions (the paper's 2.5)
    temperature: float = Field(2.5, gt=0)


class CORALConfig(RecipeSection):
    weight: float = Field(1.0, ge=0)
    #: activations to align: pooled features and/or logits (the paper: the last layer)
    layers: list[Literal["features", "logits"]] = Field(default_factory=lambda: ["features"], min_length=1)


class DANConfig(RecipeSection):
    weight: float = Field(1.0, ge=0)
    layers: list[Literal["features", "logits"]] = Field(default_factory=lambda: ["features"], min_length=1)
    #: Gaussian kernels at bandwidths median x 2^k, k = low ... high in steps of 1/2
    kernel_low: int = Field(-8, ge=-20, le=20)
    kernel_high: int = Field(8, ge=-20, le=20)

    @model_validator(mode="after")
    def _order(self) -> DANConfig:
        if self.kernel_low > self.kernel_high:
            raise ValueError(f"kernel_low ({self.kernel_low}) must be <= kernel_high ({self.kernel_high})")
        return self


class SHOTConfig(RecipeSection):
    #: beta, the weight of the pseudo-label cross-entropy (the paper: 0.3; 0.1 on digits)
    pseudo_label_weight: float = Field(0.3, ge=0)
    #: weight of the diversity term H(mean prediction)
    diversity_weight: float = Field(1.0, ge=0)


#: objectives that train without source images (from model.source_checkpoint)
SOURCE_FREE_OBJECTIVES = ("shot", "tent")
#: objectives whose discriminator / alignment uses DANN's learning-rate schedule
ADVERSARIAL_OBJECTIVES = ("dann", "cdan")


class EWCConfig(RecipeSection):
    #: lambda in (lambda/2) sum F_i (theta_i - theta*_i)^2
    lam: float = Field(100.0, ge=0, alias="lambda")
    #: true: labels sampled from the model; empirical: true labels; l2sp: F = 1
    fisher: Literal["true", "empirical", "l2sp"] = "true"
    #: source images used to estimate the Fisher
    samples: int = Field(500, ge=1, le=100_000)

    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)

    @field_validator("fisher", mode="before")
    @classmethod
    def _yaml_true(cls, v: Any) -> Any:
        return "true" if v is True else v  # YAML reads an unquoted true as a boolean
