"""Every stage's on/off and options for a request, resolved in one place and in one order.

A stage declares `options_model` (the pydantic model of its `rapport.<stage>` section, every field with a
default) and `default_on` (whether it runs when neither the request nor the model says). For each request
and stage three layers decide, a higher one over a lower one:

    1. the request  `rapport.<stage>`: False, True, a dict of options, or absent
    2. the model    `model_list[i].personalization.<stage>`: the same forms, absent meaning no say
    3. the stage    `default_on`, and the options model's own field defaults

Why this order: the request is the caller's explicit choice for this one call, the model entry is the
operator's choice for every call to that model, and the stage's default is what holds when nobody chose.
On/off comes from the highest layer that says anything (False: off; True or a dict: on), so a request can
turn off a stage its model turns on and the other way round. Options merge field by field, a higher layer's
field over a lower one's (a dict-valued field such as VAS `weights` is replaced whole, not merged), so an
operator's `{k: 3}` on a model still holds for a request that sends `{"budget": 500}`, and a request's `True`
keeps the model's options. A model's sections are validated once, when the server starts (a bad one fails
the start naming `model_list[i].personalization.<stage>.<field>`), so the merged options validated per
request can only fail on the request's own fields, and the 400 names `rapport.<stage>.<field>`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ValidationError

from proxy.errors import InvalidRequest
from proxy.pipeline.context import RapportOptions, StageOptions
from proxy.settings import ConfigError, RapportSettings

if TYPE_CHECKING:
    from proxy.services import Services


class OptionOutOfBounds(ValueError):
    """An option that is valid in itself but beyond what this server's settings allow (a VAS cap)."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


class ConfigurableStage(Protocol):
    """What the resolver needs of a stage (every pipeline stage has it: proxy/pipeline/stage.py)."""

    @property
    def name(self) -> str: ...

    @property
    def options_model(self) -> type[BaseModel]: ...

    @property
    def default_on(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class _Layer:
    """One stage's setting for one model when the request says nothing, computed once at start."""

    # The model's own options for the stage (empty when it gives none): the base a request's dict merges onto.
    fields: dict[str, Any]
    resolved: StageOptions


class StageOptionsResolver:
    """Built once per app from the settings and the loaded stages; `resolve` is called once per request."""

    def __init__(self, settings: RapportSettings, stages: Sequence[ConfigurableStage]) -> None:
        self._stages = list(stages)
        self._defaults: dict[str, _Layer] = {}
        self._layers: dict[tuple[str, str], _Layer] = {}
        problems: list[str] = []
        for stage in self._stages:
            default = _Layer({}, StageOptions(stage.default_on, stage.options_model(), "default"))
            self._defaults[stage.name] = default
            for index, entry in enumerate(settings.model_list):
                setting = getattr(entry.personalization, stage.name, None)
                where = f"model_list[{index}].personalization.{stage.name}"
                try:
                    layer = _model_layer(stage, setting, default)
                    if layer is not default:
                        _check_settings(stage, layer.resolved.options)
                except ValidationError as exc:
                    problems.extend(f"  {_param(where, err['loc'])}: {err['msg']}" for err in exc.errors())
                except OptionOutOfBounds as exc:
                    problems.append(f"  {where}.{exc.field}: {exc}")
                else:
                    self._layers[(entry.model_name, stage.name)] = layer
        if problems:
            raise ConfigError("invalid configuration:\n" + "\n".join(problems))

    def resolve(self, model: str, request: RapportOptions) -> dict[str, StageOptions]:
        """Each loaded stage's setting for a request to `model`; InvalidRequest for a bad request option."""
        resolved: dict[str, StageOptions] = {}
        for stage in self._stages:
            layer = self._layers.get((model, stage.name)) or self._defaults[stage.name]
            resolved[stage.name] = _with_request(stage, layer, getattr(request, stage.name, None))
        return resolved


def resolver_of(services: Services) -> StageOptionsResolver:
    """The app's one resolver, built on first use (when the servings are created, so at start)."""
    if services.stage_options is None:
        services.stage_options = StageOptionsResolver(services.settings, services.stages())
    resolver: StageOptionsResolver = services.stage_options
    return resolver


def _model_layer(stage: ConfigurableStage, setting: Any, default: _Layer) -> _Layer:
    if setting is None:
        return default
    fields = dict(setting) if isinstance(setting, dict) else {}
    options = stage.options_model.model_validate(fields)
    return _Layer(fields, StageOptions(setting is not False, options, "model"))


def _check_settings(stage: ConfigurableStage, options: BaseModel) -> None:
    """A stage may also check options against the server's settings (`check_options`, raising
    OptionOutOfBounds): for a model's options that is done here, so that they fail the start instead of
    every request to that model with an error that names the request."""
    check = getattr(stage, "check_options", None)
    if check is not None:
        check(options)


def _with_request(stage: ConfigurableStage, layer: _Layer, setting: bool | dict[str, Any] | None) -> StageOptions:
    if setting is None:
        return layer.resolved
    if isinstance(setting, bool):
        return StageOptions(setting, layer.resolved.options, "request")
    try:
        options = stage.options_model.model_validate({**layer.fields, **setting})
    except ValidationError as exc:
        first = exc.errors()[0]
        param = _param(f"rapport.{stage.name}", first["loc"])
        raise InvalidRequest(f"Invalid value for '{param}': {first['msg']}", param=param, code="invalid_value") from exc
    return StageOptions(True, options, "request")


def _param(prefix: str, loc: tuple[int | str, ...]) -> str:
    """A field's path as a client or operator writes it: `rapport.vas.weights.warm`, `...stop[0]`."""
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path
