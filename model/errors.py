"""Domain errors of the pure model layer. The service maps them to HTTP answers in one place."""


class PatchCoreError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(PatchCoreError, ValueError):
    """A configuration value is invalid; the message lists the valid choices."""


class BackboneError(PatchCoreError):
    """The backbone or its weights cannot be built; the message says how to fix it."""


class InputError(PatchCoreError, ValueError):
    """An input array or image is unusable (wrong shape, dtype, size)."""
