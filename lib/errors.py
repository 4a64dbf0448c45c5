"""Errors whose message is meant for the user, in plain words (shown in the UI, printed by the CLI).

Exceptions carry what a caller needs as fields (the image's path, a failure's kind), so nothing is
ever parsed back out of message text.
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """A problem with the user's input (a path, a file, a setting); its message is one plain sentence."""

    kind = "user"


class ImageError(UserError):
    """An image file that cannot be used; `path` names the file when it is known."""

    kind = "image"

    def __init__(self, message: str, path: str | Path | None = None):
        super().__init__(message)
        self.reason = message
        self.path = None if path is None else str(path)

    def __str__(self) -> str:
        if self.path is None:
            return self.reason
        return f"Could not read image {self.path}: {self.reason}"

    def with_path(self, path: str | Path) -> ImageError:
        """The same error naming the file it came from."""
        error = ImageError(self.reason, path)
        error.__cause__ = self.__cause__ or self
        return error


class WeightsUnavailable(UserError):
    """Pretrained weights could not be had (no internet for an ImageNet download)."""

    kind = "weights_unavailable"


class DiskFull(UserError):
    """Not enough free disk space (or room left under a quota) for what is about to be written.

    Raised before writing, so nothing half-written is left behind; a training run ends "failed"
    with kind "disk" (see lib.runs.recording_status).
    """

    kind = "disk"


class Cancelled(Exception):
    """The user asked a run to stop. Raised where the stop is noticed, caught once (lib.runs.recording_status)."""
