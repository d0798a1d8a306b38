"""The exceptions mobilenet_np raises.

Every error is a one-line message that names the file, field or op and what was expected.
All of them derive from `MobileNetError`, so a caller (or the CLI) can catch the project's
errors without catching programming bugs. They also derive from `ValueError` (or
`FileNotFoundError`) so that code written against the standard exceptions keeps working.
"""


class MobileNetError(Exception):
    """Base class of every error mobilenet_np raises on purpose."""


class ShapeError(MobileNetError, ValueError):
    """An op or a network got an array of the wrong rank, shape or dtype."""


class ConfigError(MobileNetError, ValueError):
    """A config field has an invalid value (the message names the field)."""


class WeightsError(MobileNetError, ValueError):
    """A weights file is missing, unreadable, or does not match the network."""


class ImageError(MobileNetError, ValueError):
    """An image could not be read or converted."""


class ConversionError(MobileNetError, ValueError):
    """A checkpoint (transformers, Keras, TFLite) could not be converted."""


class OutputExistsError(MobileNetError, FileExistsError):
    """An output file exists and --force / overwrite=True was not given."""
