"""Typed errors: the ones a user can cause end the CLI with one line and exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (suite file, names, options): reported in one line, exit 2."""


class NotApplicable(Exception):
    """A method does not apply to a backbone kind (e.g. LoRA on a CNN); becomes the run status."""
