"""`ppfr-cloud serve` settings from four places, later ones winning: ServerConfig's defaults (the one source
of defaults), a TOML file (`--config FILE` or $PPFR_CLOUD_CONFIG), environment variables PPFR_CLOUD_<SETTING>
(e.g. PPFR_CLOUD_MAX_BATCH=16), then the flags given on the command line.

Every setting is a ServerConfig field (plus `template_key_file`, read into ServerConfig.template_secret), with
the same name in TOML (`max_batch = 16`, dashes allowed) and upper-case in the environment. Secrets need no
argv: the PostgreSQL password goes in the TOML file (mode 0600), in $PPFR_CLOUD_DB, or where libpq looks
by itself ($PGPASSWORD, ~/.pgpass or $PGPASSFILE), and key paths are settings like any other.
"""

import dataclasses
import os
import tomllib
import types
import typing
from pathlib import Path

from ppfr.cloud.gallery import db_arg
from ppfr.cloud.server import ConfigError, ServerConfig

ENV_PREFIX = "PPFR_CLOUD_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"
EXTRA = {"template_key_file": Path}  # settings the CLI turns into ServerConfig fields
NOT_SETTINGS = {"template_secret"}  # made from template_key_file, never given directly
TRUE, FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


def setting_types() -> dict:
    """Setting name -> its type (Optional[...] unwrapped)."""
    hints = typing.get_type_hints(ServerConfig)
    types_ = {f.name: _unwrap(hints[f.name]) for f in dataclasses.fields(ServerConfig)}
    types_ = {name: kind for name, kind in types_.items() if name not in NOT_SETTINGS}
    return {**types_, **EXTRA}


def _unwrap(hint):
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else str  # `Path | str` (db): decided by db_arg
    return hint


def convert(name: str, value, kind, where: str):
    """A TOML or environment value as the setting's type; ConfigError names the place."""
    try:
        if name == "db":
            return db_arg(str(value))
        if kind is bool:
            return _boolean(value)
        if kind in (int, float):
            if isinstance(value, bool):
                raise ValueError
            return kind(value)
        return Path(value) if kind is Path else str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {name} = {value!r} is not a valid {kind.__name__}") from None


def _boolean(value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in TRUE | FALSE:
        raise ValueError
    return text in TRUE


def from_toml(path) -> dict:
    try:
        raw = tomllib.loads(Path(path).read_text())
    except OSError as err:
        raise ConfigError(f"--config {path}: cannot read ({err.strerror})") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"--config {path}: not valid TOML ({err})") from None
    known, out = setting_types(), {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ConfigError(
                f"--config {path}: unknown setting {key!r} (settings: {', '.join(sorted(known))})"
            )
        out[name] = convert(name, value, known[name], f"--config {path}")
    return out


def from_env(environ=None) -> dict:
    environ = os.environ if environ is None else environ
    known, out = setting_types(), {}
    for var, value in environ.items():
        if not var.startswith(ENV_PREFIX) or var == CONFIG_ENV:
            continue
        name = var[len(ENV_PREFIX) :].lower()
        if name not in known:
            raise ConfigError(f"${var}: no such setting (settings: {', '.join(sorted(known))})")
        out[name] = convert(name, value, known[name], f"${var}")
    return out


def resolve(flags: dict, config_file=None, environ=None) -> dict:
    """The settings from every source, later winning: TOML, environment, flags (None = not given)."""
    environ = os.environ if environ is None else environ
    path = config_file or environ.get(CONFIG_ENV)
    settings = from_toml(path) if path else {}
    settings.update(from_env(environ))
    settings.update({k: v for k, v in flags.items() if v is not None and k in setting_types()})
    for required in ("bundle", "db"):
        if required not in settings:
            raise ConfigError(
                f"no {required}: give --{required}, ${ENV_PREFIX}{required.upper()} or "
                f"`{required} = ...` in --config"
            )
    return settings


def build(settings: dict, template_secret=None) -> ServerConfig:
    fields = {k: v for k, v in settings.items() if k not in EXTRA}
    return ServerConfig(**fields, template_secret=template_secret)
