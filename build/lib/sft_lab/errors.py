"""One base class for errors in the user's input: the CLIs print them as one paragraph, no traceback."""


class UserError(ValueError):
    """Bad input (config, data, files, state on disk); the message names the culprit and the fix."""
