"""Domain errors of the pure model layer. The service maps them to HTTP answers in one place."""

import re


class PatchCoreError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(PatchCoreError, ValueError):
    """A configuration value is invalid; the message lists the valid choices."""


class BackboneError(PatchCoreError):
    """The backbone or its weights cannot be built; the message says how to fix it."""


class InputError(PatchCoreError, ValueError):
    """An input array or image is unusable (wrong shape, dtype, size)."""


_OBJECT_REPR = re.compile(r"<(?:[\w.]+ )?(?:[\w.]+) object at 0x[0-9a-fA-F]+>")
_CLASS_REPR = re.compile(r"<class '(?:[\w]+\.)*(\w+)'>")


def without_reprs(text: str, instead: str = "the data") -> str:
    """Error text for people: Python object reprs (`<_io.BytesIO object at 0x7f...>`) become `instead`, class reprs
    (`<class 'str'>`) their bare name. Library messages quoted in ours go through this."""
    return _CLASS_REPR.sub(r"\1", _OBJECT_REPR.sub(instead, text))
