"""User-facing errors.

Every error a user can cause (a bad file, a missing weight, a wrong option) is a `FewstepError`
whose message is one line naming the file or option and the problem. The CLI prints it without a
traceback; library callers can catch it.
"""


class FewstepError(Exception):
    """Base class of the errors that the CLI reports as a single line."""


class ImageReadError(FewstepError):
    """An input image could not be read (message names the file and the reason)."""


class WeightsNotFoundError(FewstepError):
    """A weight file is missing locally and could not be downloaded."""


class CheckpointError(FewstepError):
    """A checkpoint does not match the model it is loaded into (names the key)."""
