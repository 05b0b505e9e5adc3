"""Errors a user can act on. Each message says what is wrong and what to do about it."""


class LdmError(Exception):
    """Base class of every error ldm raises on purpose; the CLI prints it as one line."""


class ConfigError(LdmError):
    """A model or generation setting is invalid."""


class CheckpointError(LdmError):
    """A checkpoint file or folder cannot be read or is not an SD v1 model."""
