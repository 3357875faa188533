"""One base class for errors in the user's input: the CLIs print them as one paragraph, no traceback."""


class UserError(ValueError):
    """Bad input (config, data, files, state on disk); the message names the culprit and the fix."""


class ConfigError(UserError):
    """A config that composed but cannot be run; the message names the key."""
