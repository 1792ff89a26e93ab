"""Keeps the terminal for what minivlm has to say: third-party tips and deprecation noise go.

Lightning prints advertising tips ("💡 Tip: ... litlogger") through its loggers, and
libraries warn about their own internal deprecations, none of which a user can act on.
Our own warnings and errors are untouched.
"""

from __future__ import annotations

import logging
import warnings

TIP_PREFIX = "💡 Tip:"
_LIGHTNING_LOGGERS = (
    "lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
)


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(TIP_PREFIX)


def quiet_third_party() -> None:
    """Installs the filters (idempotent)."""
    for name in _LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())
        for handler in logger.handlers:
            if not any(isinstance(f, _DropTips) for f in handler.filters):
                handler.addFilter(_DropTips())
    # Deprecations inside libraries (e.g. torch's pytree LeafSpec under Lightning) are not ours to fix.
    for category in (DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("ignore", message=r".*is deprecated.*")
