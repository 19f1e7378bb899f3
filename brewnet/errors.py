"""Exception types for user errors.

Every error that bad input can cause (a malformed prototxt, a layer with invalid
parameters, a missing file) derives from :class:`BrewnetError`. The command line
therefore prints its message on one line and exits with status 1, with no traceback.
Each concrete type also derives from the built-in exception that fits the cause.
"""

from __future__ import annotations


class BrewnetError(Exception):
    """Base class of the errors that bad user input causes."""


class PrototxtError(BrewnetError, ValueError):
    """A prototxt or binary protobuf file could not be parsed."""


class NetDefinitionError(BrewnetError, ValueError):
    """A net definition is inconsistent: unknown blobs, bad loss weights, and so on."""


class UnknownLayerTypeError(NetDefinitionError):
    """A layer names a type that no registered layer class provides."""


class LayerSetupError(BrewnetError, ValueError):
    """A layer's parameters or bottom shapes are invalid."""


class SolverError(BrewnetError, ValueError):
    """A solver definition or solver state is invalid."""


class DataError(BrewnetError, RuntimeError):
    """A database or data file is missing, unreadable or contains the wrong records."""


class ModelFileError(BrewnetError, ValueError):
    """A .caffemodel, .solverstate, .binaryproto or HDF5 weights file is invalid."""


class DeviceError(BrewnetError, RuntimeError):
    """The requested device (a GPU) is not available."""
