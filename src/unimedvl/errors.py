"""Errors the user can act on.

Every public entry point raises :class:`UnimedvlError` (or a subclass) for bad input, with a
one-line message naming the problem; the CLI prints that line instead of a traceback.
"""


class UnimedvlError(Exception):
    """Base class for errors caused by user input (files, images, prompts, configs)."""


class ConfigError(UnimedvlError, ValueError):
    """A configuration value or file is invalid."""


class CheckpointError(UnimedvlError):
    """A checkpoint folder is missing files, holds unsafe formats, or does not match the model."""


class InputError(UnimedvlError, ValueError):
    """An image, prompt or option passed to inference is invalid."""
