"""The errors the ``senolab`` command prints as one line instead of a traceback.

:class:`InputError` means "the user's input is wrong", not "senolab is broken": printed as
``error: ...`` with exit 2, before long work starts wherever the input can be checked up
front. Messages name the file (and the row, column or key) and say what was expected.
:class:`WorkFailed` means part of the work failed while the rest finished (exit 1).
"""
from __future__ import annotations


class InputError(ValueError):
    """A config, dataset, path or option that senolab refuses; the message says why."""


class WorkFailed(RuntimeError):
    """Part of a command's work failed; each failure is recorded where the command writes
    (a study run's error.json) and the rest finished. Printed as one line, exit 1."""
