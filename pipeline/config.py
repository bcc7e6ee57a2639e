"""A workflow config checked against its JSON schema, with one line for the first problem.

jsonschema's own report of a misspelt key is a warning, the useful line, and a few hundred
lines of schema; this says where the problem is, what was expected and, for a key it does
not know, the closest one it does.
"""

from __future__ import annotations

import difflib
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError, best_match

from pipeline.errors import ConfigError


def check_config(config: dict[str, Any], schema: dict[str, Any]) -> None:
    """Raise ConfigError (one line: where, what is wrong, what would be right) for the most
    relevant problem of `config`, or return if it matches `schema`."""
    validator = jsonschema.Draft202012Validator(schema)
    error = best_match(validator.iter_errors(config))
    if error is not None:
        raise ConfigError(describe(error), setting=_where(error) or None)


def _where(error: ValidationError) -> str:
    return ".".join(str(part) for part in error.absolute_path)


def describe(error: ValidationError) -> str:
    where = _where(error)
    at = f"{where}: " if where else ""
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = list(error.schema.get("properties", {}))
        unknown = [key for key in error.instance if key not in known]
        if unknown and known:
            key = unknown[0]
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            return f"{at}{key!r} is not a key here; {hint}(keys: {', '.join(known)})"
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return f"{at}{missing!r} is required"
    if error.validator == "oneOf":  # which of the alternatives came closest says the most
        closest = best_match(error.context) if error.context else None
        if closest is not None and closest.validator != "type":
            return f"{at}{closest.message}"
        return f"{at}{error.instance!r} is not {_expected(error.validator_value)}"
    if error.validator == "pattern":
        return f"{at}{error.instance!r} is not of the form {error.validator_value}"
    return f"{at}{error.message}"


def _expected(alternatives: list[dict[str, Any]]) -> str:
    """What a oneOf accepts, in words: 'an integer >= 1, a number > 0 and < 1, or null'."""
    words = []
    for alternative in alternatives:
        if "enum" in alternative:
            words.append("one of " + ", ".join(map(str, alternative["enum"])))
        elif "$ref" in alternative:
            words.append(alternative["$ref"].rsplit("/", 1)[1])
        else:
            kind = alternative.get("type", "a value")
            kind = " or ".join(kind) if isinstance(kind, list) else kind
            bounds = [f"{op} {alternative[key]}" for key, op in (("minimum", ">="), ("exclusiveMinimum", ">"),
                                                                  ("maximum", "<="), ("exclusiveMaximum", "<"))
                      if key in alternative]
            if "pattern" in alternative:
                bounds.append(f"of the form {alternative['pattern']}")
            words.append(kind + (" " + " and ".join(bounds) if bounds else ""))
    return ", ".join(words[:-1]) + (" or " if len(words) > 1 else "") + words[-1]


def check_stores(stores: dict[str, Any], teachers: dict[str, Any]) -> None:
    """Raise ConfigError (one line) for a store that names no teacher of the config, or an
    ensemble whose members are not other stores of the config, listed once, never itself (or
    an ensemble that contains it), with a weight each; the keys of a teacher's store do not
    apply to an ensemble, nor its keys to a teacher's store."""
    for name, store in stores.items():
        if "ensemble" in store:
            _check_ensemble(name, store, stores)
        elif "teacher" not in store or "views" not in store:
            raise ConfigError(f"config: stores.{name}: give a teacher and its views, or an ensemble of stores")
        elif "space" in store or "weights" in store:
            raise ConfigError(f"config: stores.{name}: space and weights combine an ensemble's members; "
                              "this store has a teacher")
        elif store["teacher"] not in teachers:
            raise ConfigError(f"config: stores.{name}.teacher {store['teacher']!r} is not one of teachers: "
                              f"{sorted(teachers)}")


def _check_ensemble(name: str, store: dict[str, Any], stores: dict[str, Any]) -> None:
    dumped = sorted(k for k in ("teacher", "views", "batch_size", "max_gb") if k in store)
    if dumped:
        raise ConfigError(f"config: stores.{name}: an ensemble combines its members' logits; {', '.join(dumped)} "
                          "belong to a store a teacher fills")
    members = store["ensemble"]
    for member in members:
        if member not in stores:
            raise ConfigError(f"config: stores.{name}.ensemble member {member!r} is not one of stores: {sorted(stores)}")
    if len(set(members)) != len(members):
        raise ConfigError(f"config: stores.{name}.ensemble lists a store twice: {members}")
    if store.get("weights") is not None and len(store["weights"]) != len(members):
        raise ConfigError(f"config: stores.{name}.weights has {len(store['weights'])} values for {len(members)} members")
    seen, todo = set(), list(members)
    while todo:
        member = todo.pop()
        if member == name:
            raise ConfigError(f"config: stores.{name} is an ensemble that contains itself")
        if member not in seen:
            seen.add(member)
            todo += stores[member].get("ensemble", [])
