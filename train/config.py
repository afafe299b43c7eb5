"""Training configs: a recipe plus a method's overrides, checked against one typed schema.

A config file (configs/<recipe>_<method>.yaml) names its recipe (`recipe: recipes/dlib.yaml`, a path
relative to the file) and says what its method changes; its mappings are merged into the recipe's key by
key, everything else replaces. `full_config` fills in the defaults below and checks every key and type,
so a user mistake is one line (`ConfigError`), never a traceback. The result stays a plain dict: it is
what a checkpoint stores and what every stage (export, attack, bench) reads back.
"""

import copy
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Literal

import yaml

SHARED = "../shared/data"
METHOD_EXAMPLE = "{name: rgb|bdct|ppfr_fd|dctdp|partialface, ...}"


class ConfigError(ValueError):
    """A user mistake in the config: reported without a traceback."""


@dataclass
class Head:
    type: str = "cosface"  # cosface | arcface (heads.py)
    s: float = 32.0
    m: float | None = 0.35
    weight: float = 1.0  # 0: no margin head


@dataclass
class Distill:
    """online: the pretrained dlib net runs beside the student on the same augmented faces (student.py);
    otherwise the cached `teacher` embeddings are the targets."""

    weight: float = 0.0
    teacher: str = f"{SHARED}/teacher/dlib_celeba.npz"
    center: bool = True
    online: bool = False
    feature_weight: float = 1.0


@dataclass
class Data:
    train: str = f"{SHARED}/celeba/aligned112"
    labels_csv: str | None = f"{SHARED}/celeba/labels.csv"
    overlap_json: str | None = f"{SHARED}/celeba/overlap_flags.json"
    max_images: int | None = None
    unlabeled: list[dict] = field(default_factory=list)  # [{root, max_images}]: faces without identities
    leak_far: float = 1e-5  # unlabeled faces this close to an eval image are dropped (leak_filter.py)
    cache: str = "runs/.cache"
    eval: list[dict] = field(
        default_factory=lambda: [
            {"name": "lfw", "pairs": f"{SHARED}/lfw/pairs.txt", "root": f"{SHARED}/lfw/aligned112"}
        ]
    )


@dataclass
class Train:
    batch_size: int = 64  # per process
    max_steps: int = 1000
    epochs: float | None = None  # when set, overrides max_steps (steps = epochs * steps per epoch)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    method_lr: float | None = None  # learnable protection parameters (DCTDP rhos, analysis logits); None = lr
    method_optimizer: Literal["adam", "sgd"] = "adam"
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    milestones: list[float] = field(default_factory=list)  # epochs (step schedule)
    gamma: float = 0.1
    warmup_steps: int = 0
    flip: bool = True
    augment: dict = field(
        default_factory=dict
    )  # augment.py: scale, rotate, shift, brightness, contrast, gray
    trunk_lr_mult: float = 1.0  # learning-rate factor for a pretrained trunk (0 freezes it)
    trunk_frozen_steps: int = 0  # the trunk stays frozen this many steps (the stem learns first)
    front_lr_mult: float = 1.0  # learning-rate factor for a pixel stem's copy of the pretrained first layers
    # Steps where a new stage begins: a fresh optimizer, and the LR schedule runs to the next boundary
    # (to max_steps after the last). E.g. [1000] with trunk_frozen_steps 1000: stem, then fine-tuning.
    stages: list[int] = field(default_factory=list)
    calibrate_images: int = 1024
    eval_every: int = 0  # steps; 0 = only at the end
    save_every: int = 0
    max_minutes: float | None = None  # wall-clock cap for the loop (makes step count machine-dependent)
    threads: int | None = None
    device: Literal["auto", "cuda", "cpu"] = "auto"
    amp: bool = False
    log_every: int = 20


@dataclass
class Eval:
    seed: int = 0
    init: bool = True  # evaluate the untrained model too (metrics.json compares)
    batch_size: int = 128


@dataclass(kw_only=True)
class Config:
    name: str = "run"
    seed: int = 0
    method: dict = field(metadata={"example": METHOD_EXAMPLE})  # its parameters: methods.py
    model: dict = field(
        default_factory=lambda: {"backbone": "mobilefacenet", "embedding_size": 128, "stem": "direct"}
    )  # {backbone, ...its parameters} (backbones.py)
    head: Head = field(default_factory=Head)
    distill: Distill = field(default_factory=Distill)
    data: Data = field(default_factory=Data)
    train: Train = field(default_factory=Train)
    eval: Eval = field(default_factory=Eval)


# --- files: recipe + overrides ---------------------------------------------------------------------
def _read(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config {path} does not exist")
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path} must be a mapping")
    return cfg


def overlay(base: dict, over: dict) -> dict:
    """`over` on top of `base`: mappings merge key by key, anything else (lists included) replaces."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = overlay(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_config(path) -> dict:
    """The config a file describes: its recipe (if it names one) with the file's keys on top; `name`
    defaults to the file's stem."""
    path = Path(path)
    cfg = _read(path)
    recipe = cfg.pop("recipe", None)
    if recipe is not None:
        base = _read(path.parent / str(recipe))
        if "recipe" in base:
            raise ConfigError(f"{path.parent / str(recipe)}: a recipe cannot name another recipe")
        cfg = overlay(base, cfg)
    cfg.setdefault("name", path.stem)
    return cfg


# --- the schema ------------------------------------------------------------------------------------
_NAMES = {float: "a number", int: "an integer", bool: "true or false", str: "a string", dict: "a mapping"}
_PLURAL = {float: "numbers", int: "integers", dict: "mappings"}


def _type_name(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin is list:
        return f"a list of {_PLURAL[args[0]]}"
    return _NAMES[hint]


def _fits(value, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
    if hint is float:  # YAML writes 1 for 1.0; a bool is no number here
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return value is None if hint is type(None) else isinstance(value, hint)


def _type_error(key: str, value, hint) -> ConfigError:
    msg = f"config key {key!r} must be {_type_name(hint)}, got {value!r}"
    try:
        float(value)
        if isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string
            msg += "; write numbers like 1.0e-3"
    except (TypeError, ValueError):
        pass
    return ConfigError(msg)


def _section(schema, given, path: str) -> dict:
    """`given` checked against a dataclass: unknown, missing and wrongly typed keys are ConfigErrors;
    absent keys take their defaults. Keys come out in the schema's order."""
    if not isinstance(given, dict):
        raise ConfigError(f"config key {path.rstrip('.')!r} must be a mapping, got {given!r}")
    known = [f.name for f in fields(schema)]
    for k in given:
        if k not in known:
            raise ConfigError(f"unknown config key {path + str(k)!r}; known: {sorted(known)}")
    hints = typing.get_type_hints(schema)
    out = {}
    for f in fields(schema):
        key = path + f.name
        if f.name not in given:
            if f.default is MISSING and f.default_factory is MISSING:
                raise ConfigError(f"config needs {key}: {f.metadata['example']}")
            default = f.default if f.default is not MISSING else f.default_factory()
            out[f.name] = _section(type(default), {}, key + ".") if is_dataclass(default) else default
        elif is_dataclass(hints[f.name]):
            out[f.name] = _section(hints[f.name], given[f.name], key + ".")
        elif _fits(given[f.name], hints[f.name]):
            out[f.name] = copy.deepcopy(given[f.name])
        else:
            raise _type_error(key, given[f.name], hints[f.name])
    return out


def full_config(config: dict) -> dict:
    """Every key of a training run: `config` over the schema's defaults, checked (ConfigError)."""
    cfg = _section(Config, config, "")
    if "name" not in cfg["method"]:
        raise ConfigError(f"config needs method.name (method: {METHOD_EXAMPLE})")
    if cfg["head"]["weight"] <= 0 and cfg["distill"]["weight"] <= 0:
        raise ConfigError("nothing to train: set head.weight > 0 and/or distill.weight > 0")
    return cfg
