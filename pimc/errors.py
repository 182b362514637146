"""User-facing errors: each carries a message that names what is wrong and an exit status.

The CLI prints ``error: <message>`` and exits with ``exit_code``; only ``--debug`` shows a traceback.
Internal bugs are ordinary exceptions and are not caught as user errors.
"""

from runtime.errors import UserError


class ModelError(UserError):
    """The ONNX model is unreadable or uses something pimc does not support."""

    exit_code = 2


# The runtime validates embedded configs too, so the class lives there; one class for both sides.
from runtime.errors import ConfigError  # noqa: E402,F401


class InputError(UserError):
    """A user-supplied input array (data, calibration) has the wrong shape, dtype or format."""

    exit_code = 2


class PipelineError(UserError):
    """A pass pipeline names an unknown pass or a bad option."""

    exit_code = 2
