"""
nanoGPT's configuration convention, with checks: `python train.py [config.py ...] [--key=value ...]`.

Start from the defaults, apply each config file (plain Python; its globals are the settings), then each
--key=value, in the order given. Every key must be one of the defaults and every value must have the
default's type (an int is accepted for a float; a default of None accepts an int or None), so a typo
stops the run before it starts instead of being silently ignored.
"""

import ast
import difflib
import types


class ConfigError(ValueError):
    """A mistake in the configuration, reported as one line."""


def checked(key, value, defaults, source):
    """value, if key is a known setting and value has its type (ints widened to float where needed)."""
    if key not in defaults:
        close = difflib.get_close_matches(key, defaults, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else f"; known keys: {', '.join(defaults)}"
        raise ConfigError(f"unknown config key {key!r} in {source}{hint}")
    default = defaults[key]
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if default is None:
        ok, expected = value is None or is_int, "an int or None"
    elif isinstance(default, bool):
        ok, expected = isinstance(value, bool), "True or False"
    elif isinstance(default, int):
        ok, expected = is_int, "an int"
    elif isinstance(default, float):
        ok, expected = is_int or isinstance(value, float), "a number"
        value = float(value) if ok else value
    else:
        ok, expected = isinstance(value, type(default)), f"a {type(default).__name__}"
    if not ok:
        raise ConfigError(f"{key} must be {expected}, got {value!r} in {source}")
    return value


def parse_override(arg, defaults):
    """(key, value) from "--key=value"; strings are taken verbatim, anything else as a Python literal."""
    key, sep, text = arg[2:].partition("=")
    if not sep:
        raise ConfigError(f"expected --key=value, got {arg!r}")
    if isinstance(defaults.get(key), str):
        return key, text
    try:
        return key, ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return key, text  # not a literal: let the type check name the key and the expected type


def load_config(defaults, argv):
    """The defaults updated by config files and --key=value overrides from argv, all checked."""
    config = dict(defaults)
    for arg in argv:
        if arg.startswith("--"):
            key, value = parse_override(arg, defaults)
            config[key] = checked(key, value, defaults, f"--{key}")
            continue
        try:
            with open(arg) as f:
                source = f.read()
        except OSError as e:
            raise ConfigError(f"cannot read config file {arg!r}: {e.strerror}") from None
        namespace = {}
        try:
            exec(compile(source, arg, "exec"), namespace)
        except Exception as e:
            raise ConfigError(f"config file {arg} failed: {type(e).__name__}: {e}") from None
        for key, value in namespace.items():
            if not key.startswith("_") and not isinstance(value, types.ModuleType):
                config[key] = checked(key, value, defaults, arg)
    return config
