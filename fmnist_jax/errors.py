"""The one base of every error a user can cause or fix, at the bottom of the floors so each one can build on it."""
from __future__ import annotations


class UserError(ValueError):
    """A mistake or a missing thing that the user can act on, said in one line: the pages and the background
    registries show it as a message, and the CLI prints it and exits with status 2. It is a ValueError, so every
    `except ValueError` that handles bad input handles these too. Anything else that escapes is a bug, and the
    studio shows it with a reference to the server log instead."""
