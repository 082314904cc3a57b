"""Where the config's values come from, before the one loader (:func:`jobs.platform.config.load_settings`) validates
them: YAML files merged in order, and ``TAXI__SECTION__KEY=value`` environment overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

ENV_PREFIX = "TAXI__"


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key. The CLI exits with ``exit_code``, no traceback."""

    exit_code = 2


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as e:
        raise ConfigError(f"config file not found: {path}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def env_overrides(env: dict[str, str], model: type[BaseModel]) -> dict[str, Any]:
    """``TAXI__TRAIN__XGBOOST__max_depth=8`` → {"train": {"xgboost": {"max_depth": 8}}}."""
    out: dict[str, Any] = {}
    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        path = key_path(key[len(ENV_PREFIX) :].split("__"), model)
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = yaml.safe_load(raw) if raw != "" else None
    return out


def key_path(parts: list[str], model: type[BaseModel] | None) -> list[str]:
    """Section and field names are lower case; the keys of a free-form mapping (Spark conf, learner params) keep
    their case: ``TRAIN__INTERVALS__PARAMS__numIterations`` -> train, intervals, params, numIterations."""
    path: list[str] = []
    for part in parts:
        if model is None:
            path.append(part)
            continue
        path.append(part.lower())
        field = model.model_fields.get(part.lower())
        kind = field.annotation if field is not None else None
        model = kind if isinstance(kind, type) and issubclass(kind, BaseModel) else None
    return path
