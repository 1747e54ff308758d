"""The one family of errors that means "the user's input is wrong", not "senolab is broken".

The ``senolab`` command prints any :class:`InputError` as one line (``error: ...``) and
exits 2, before long work starts wherever the input can be checked up front. Messages
name the file (and the row, column or key) and say what was expected.
"""
from __future__ import annotations


class InputError(ValueError):
    """A config, dataset, path or option that senolab refuses; the message says why."""
