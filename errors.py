"""The one error hierarchy of coinfer.

Library code raises these; only the CLI turns them into a one-line message and exit code 2.
Anything else escaping the library is a programming error and keeps its traceback.
"""

from __future__ import annotations


class CoinferError(Exception):
    """Base of every error a user can cause and fix."""


class UserInputError(CoinferError):
    """An option, a value or a path given by the user is not acceptable."""


class ModelNotFoundError(UserInputError):
    """The model spec names neither a folder with weights nor a known preset."""


class UnsupportedModelError(CoinferError):
    """The model's architecture or an operation in it is not supported."""


class SchemaError(CoinferError):
    """A coinfer file is malformed, of the wrong kind or of an unknown version."""


class IntegrityError(CoinferError):
    """A file's content does not match the checksum recorded for it."""


class DeviceUnavailableError(UserInputError):
    """The requested compute device or dtype cannot be used on this machine."""


class InfeasibleError(CoinferError):
    """No plan satisfies the budgets."""


class ContendedMeasurementError(CoinferError):
    """Under --strict: a timed measurement ran while other processes crowded the machine."""
