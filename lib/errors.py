"""Errors whose message is meant for the user, in plain words (shown in the UI, printed by the CLI)."""


class UserError(Exception):
    """A problem with the user's input (a path, a file, a setting); its message is one plain sentence."""


class ImageError(UserError):
    """An image file that cannot be used; the message says why in plain words."""
