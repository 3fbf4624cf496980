"""Configs made of parts: frozen dataclasses nested by concern that read and write one flat set of fields, so that
checkpoints, protocols and reports list every hyperparameter by its own name, and a change names only the field.

    config = PolicyConfig.of(method="flow", steps=2_000, exec_steps=1)   # routed to config.optim, config.chunking
    config.as_flat()                                                     # {"method": "flow", "obs_steps": 2, ...}
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass

import optax

from physgen.errors import PhysgenError


class Parts:
    """For a frozen dataclass whose fields are values or parts (frozen dataclasses of values), every field name
    unique across the parts; every field has a default."""

    @classmethod
    def of(cls, **flat):
        """The defaults with the named fields changed."""
        return cls().replace(**flat)

    @classmethod
    def from_dict(cls, values: dict):
        """The config of a flat dictionary (JSON: lists become tuples)."""
        return cls.of(**values)

    def as_flat(self) -> dict:
        flat = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            flat.update(dataclasses.asdict(value) if dataclasses.is_dataclass(value) else {field.name: value})
        return flat

    def replace(self, **flat):
        """This config with the named fields changed, each in the part that holds it."""
        home = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            parts = dataclasses.fields(value) if dataclasses.is_dataclass(value) else ()
            home.update({part.name: field.name for part in parts} or {field.name: None})
        unknown = [name for name in flat if name not in home]
        if unknown:
            raise PhysgenError(f"{type(self).__name__} has no field {', '.join(unknown)}; its fields: "
                               f"{', '.join(home)}")
        top, nested = {}, {}
        for name, value in flat.items():
            value = tuple(value) if isinstance(value, list) else value
            (nested.setdefault(home[name], {}) if home[name] else top)[name] = value
        parts = {part: dataclasses.replace(getattr(self, part), **changes) for part, changes in nested.items()}
        return dataclasses.replace(self, **top, **parts)


def check(config, choices: dict[str, tuple] | None = None, positive: tuple[str, ...] = ()) -> None:
    """Refuse a field outside its choices, or one of `positive` below 1."""
    for name, allowed in (choices or {}).items():
        if getattr(config, name) not in allowed:
            raise PhysgenError(f"{name} must be one of {', '.join(allowed)}, got {getattr(config, name)!r}")
    for name in positive:
        if getattr(config, name) < 1:
            raise PhysgenError(f"{name} must be at least 1, got {getattr(config, name)}")


@dataclass(frozen=True)
class Optimisation:
    """Gradient steps and AdamW with linear warm-up, cosine decay and global-norm clipping; `steps_per_call` steps
    run in one compiled call, between which progress, curves and checks happen."""

    steps: int = 10_000
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    grad_clip: float = 1.0
    steps_per_call: int = 500

    def __post_init__(self):
        check(self, positive=("steps", "batch_size", "steps_per_call"))

    def optimizer(self) -> optax.GradientTransformation:
        warmup = min(self.warmup_steps, self.steps // 10)
        schedule = optax.warmup_cosine_decay_schedule(0.0, self.learning_rate, warmup, max(self.steps, warmup + 1))
        return optax.chain(optax.clip_by_global_norm(self.grad_clip),
                           optax.adamw(schedule, weight_decay=self.weight_decay))


def parse_overrides(text: str) -> dict[str, str]:
    """`field=value[,field=value...]` as {field: value text}; a comma inside a value (a tuple: `unet_dims=32,64`)
    stays with it, since only a comma before `name=` starts the next field."""
    changes = {}
    for part in re.split(r",(?=\s*[\w.]+\s*=)", text.strip()):
        name, equals, value = part.partition("=")
        if not equals or not name.strip():
            raise PhysgenError(f"--set takes field=value[,field=value...], got {part!r}")
        changes[name.strip()] = value.strip()
    return changes


def parse_variants(specs: list[str]) -> dict[str, list[str]]:
    """`--vary` flags, each `field=value,value[,...]` (a tuple value in brackets: `unet_dims=[32,64],[64,128]`), as
    {field: [value texts]} in the order given."""
    variants = {}
    for spec in specs:
        name, equals, text = (part.strip() for part in spec.partition("="))
        values = [value.strip() for value in re.split(r",(?![^\[]*\])", text)]  # commas outside brackets
        if not equals or not name or not all(values):
            raise PhysgenError(f"--vary takes field=value,value[,...], got {spec!r}")
        if name in variants or len(set(values)) < len(values):
            raise PhysgenError(f"--vary names {name} or one of its values twice ({spec!r}); name each once")
        variants[name] = values
    return variants


def field_names(values: dict) -> set[str]:
    """The names `override` accepts for `values`: each field, and `part.field` for the fields of named parts."""
    if not all(isinstance(v, dict) for v in values.values()):
        return set(values)
    return {name for part, fields in values.items() for f in fields for name in (f, f"{part}.{f}")}


def override(values: dict, changes: dict[str, str]) -> dict:
    """`values` (a config's flat JSON, or named parts of it such as {"rssm": {...}, "mpc": {...}}) with `changes`,
    each text parsed as the type of the value it replaces; `part.field` names one part's field, a plain name every
    part that has it. A changed `steps` keeps the number of `steps_per_call` calls (the curve points)."""
    nested = all(isinstance(v, dict) for v in values.values())
    parts = {name: dict(v) for name, v in values.items()} if nested else {"": dict(values)}
    for name, text in changes.items():
        part, _, field = name.rpartition(".")
        targets = [p for p in parts if part in ("", p) and field in parts[p]]
        if not targets:
            known = sorted(f"{p}.{f}" if p else f for p, fields in parts.items() for f in fields)
            raise PhysgenError(f"unknown field {name!r} in --set; the fields: {', '.join(known)}")
        for fields in (parts[p] for p in targets):
            if field == "steps" and "steps_per_call" in fields and not any(
                    c.rpartition(".")[2] == "steps_per_call" for c in changes):
                calls = -(-fields["steps"] // fields["steps_per_call"])
                fields["steps_per_call"] = -(-_parse(name, text, fields["steps"]) // calls)
            fields[field] = _parse(name, text, fields[field])
    return parts if nested else parts[""]


def _parse(name: str, text: str, current):
    """`text` as a value of the type of `current`: JSON numbers, true/false and null, a comma list for a tuple."""
    try:
        value = json.loads(f"[{text}]" if isinstance(current, (list, tuple)) and not text.startswith("[") else text)
    except json.JSONDecodeError:
        value = text
    if isinstance(current, (list, tuple)) and isinstance(value, list):
        return tuple(_parse(name, json.dumps(v), current[0]) if current else v for v in value)
    if current is None or type(value) is type(current):
        return value
    if type(current) is float and type(value) is int:
        return float(value)
    raise PhysgenError(f"{name}={text}: {name} takes {type(current).__name__} values such as {current!r}")
