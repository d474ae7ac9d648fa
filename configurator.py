"""
nanoGPT's configuration convention, with checks: `python train.py [config.py ...] [--key=value ...]`.

Start from the defaults, apply each config file (plain Python; its globals are the settings), then each
--key=value, in the order given. The settings table names every key's default and type (a type, or a tuple of
types where None may stand for "unset"), so a typo or a wrong type stops the run before it starts instead of
being silently ignored. An int is accepted where a float is expected.
"""

import ast
import difflib
import os
import types


class ConfigError(ValueError):
    """A mistake in the configuration, reported as one line."""


def type_names(allowed):
    names = {bool: "True or False", int: "an int", float: "a number", str: "a string", dict: "a dict", None: "None"}
    return " or ".join(names.get(t, f"a {getattr(t, '__name__', t)}") for t in allowed)


def checked(key, value, settings, source):
    """value, if key is a known setting and value has one of its types (an int widened to float where needed)."""
    if key not in settings:
        close = difflib.get_close_matches(key, settings, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else f"; known keys: {', '.join(settings)}"
        raise ConfigError(f"unknown config key {key!r} in {source}{hint}")
    allowed = settings[key][1] if isinstance(settings[key][1], tuple) else (settings[key][1],)
    for kind in allowed:
        if kind is None and value is None:
            return value
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind not in (None, int, float) and isinstance(value, kind):
            return value
    raise ConfigError(f"{key} must be {type_names(allowed)}, got {value!r} in {source}")


def parse_override(arg, settings):
    """(key, value) from "--key=value"; text for string-only keys, anything else read as a Python literal."""
    key, sep, text = arg[2:].partition("=")
    if not sep:
        raise ConfigError(f"expected --key=value, got {arg!r}")
    if key in settings and settings[key][1] is str:
        return key, text
    try:
        return key, ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return key, text  # not a literal: let the type check name the key and the expected type


def load_config(settings, argv):
    """The defaults of `settings` ({key: (default, type)}) updated by config files and --key=value overrides."""
    config = {key: default for key, (default, _) in settings.items()}
    for arg in argv:
        if arg.startswith("--"):
            key, value = parse_override(arg, settings)
            config[key] = checked(key, value, settings, f"--{key}")
            continue
        try:
            with open(arg) as f:
                source = f.read()
        except OSError as e:
            raise ConfigError(f"cannot read config file {arg!r}: {e.strerror}") from None
        namespace = {"__file__": os.path.abspath(arg)}  # so that a config can build on another beside it
        try:
            exec(compile(source, arg, "exec"), namespace)
        except Exception as e:
            raise ConfigError(f"config file {arg} failed: {type(e).__name__}: {e}") from None
        for key, value in namespace.items():
            if not key.startswith("_") and not isinstance(value, types.ModuleType):
                config[key] = checked(key, value, settings, arg)
    return config
