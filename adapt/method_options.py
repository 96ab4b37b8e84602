"""A recipe run's method options: the section base (:class:`RecipeSection`), the objective
and its options (:class:`ObjectiveOptions`) and the ``ewc:`` penalty's options.

An objective's own options (``dann:``, ``cdan:``, ...) are declared in its own file under
``adapt/methods/`` and registered with it (:mod:`adapt.method_registry`); a run validates
them by the registry.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializationInfo,
    ValidationInfo,
    create_model,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from adapt import method_registry
from adapt.data.spec import reject_bool_for_number


class RecipeSection(BaseModel):
    """Every recipe section rejects unknown keys (typos must not pass silently) and
    non-finite numbers (``lr: .inf`` or ``1e400`` is a typo, never a setting)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        return reject_bool_for_number(cls, value, info)


class ObjectiveOptions(RecipeSection):
    """A run's ``objective`` (a registered name) and the registered objectives' sections.

    Every registered section is a key of the run, defaults filled whichever the objective
    (so ``method.runs.0.mcc.weight=2`` overrides any run): they are split off before the
    run's own keys are validated (an unknown key is named as in every section), then
    validated by their models (errors keep the key path, ``method.runs.0.dann.weight``) and
    dumped back in place.
    """

    _sections: dict[str, RecipeSection] = PrivateAttr(default_factory=dict)

    @field_validator("objective", mode="before", check_fields=False)
    @classmethod
    def _registered(cls, v: Any) -> Any:
        names = list(method_registry.objectives())
        if v not in names:  # worded as pydantic words a Literal
            quoted = [repr(n) for n in names]
            raise PydanticCustomError("literal_error", "Input should be {expected}",
                                      {"expected": f"{', '.join(quoted[:-1])} or {quoted[-1]}"})
        return v

    @model_validator(mode="wrap")
    @classmethod
    def _split_sections(cls, data: Any, handler: Any) -> Any:
        if not isinstance(data, dict):
            return handler(data)
        types = method_registry.sections()
        run = handler({k: v for k, v in data.items() if k not in types})
        given = _sections_model(tuple(types.items())).model_validate({k: data[k] for k in types if k in data})
        run._sections = {k: getattr(given, k) for k in types}
        return run

    #: the run key the sections are dumped before (the end without one)
    sections_before: ClassVar[str | None] = None

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any, info: SerializationInfo) -> dict[str, Any]:
        own = handler(self)
        sections = {k: s.model_dump(mode=info.mode, by_alias=info.by_alias) for k, s in self._sections.items()}
        keys = list(own)
        at = keys.index(self.sections_before) if self.sections_before in keys else len(keys)
        return {**{k: own[k] for k in keys[:at]}, **sections, **{k: own[k] for k in keys[at:]}}

    def section(self, key: str) -> RecipeSection:
        """The options under the run key ``key`` (``run.section("dann").weight``)."""
        return self._sections[key]

    @property
    def spec(self) -> method_registry.ObjectiveSpec:
        """The objective's registration."""
        return method_registry.objective(self.objective)

    @property
    def options(self) -> RecipeSection | None:
        """The objective's own options (None when it registered no section)."""
        key = self.spec.options_key
        return None if key is None else self._sections[key]


_SECTION_MODELS: dict[tuple, type[RecipeSection]] = {}


def _sections_model(types: tuple[tuple[str, type[RecipeSection]], ...]) -> type[RecipeSection]:
    """A model with one field per registered section (defaults filled), made once per registry state."""
    if types not in _SECTION_MODELS:
        _SECTION_MODELS[types] = create_model("RunSections", __base__=RecipeSection,
                                              **{k: (t, Field(default_factory=t)) for k, t in types})
    return _SECTION_MODELS[types]


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
