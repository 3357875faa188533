"""One base class for errors in the user's input: the CLIs print them as one paragraph, no traceback."""


class UserError(ValueError):
    """Bad input (config, data, files, state on disk); the message names the culprit and the fix."""


class ConfigError(UserError):
    """A config that composed but cannot be run; the message names the key."""


def explain(e: BaseException) -> str:
    """An error's first line and its cause's: Hydra says which override failed, its cause what was wrong with it
    (e.g. "Invalid value 'x', expected one of [...]")."""
    text = (str(e).splitlines() or [type(e).__name__])[0]
    cause = str(e.__cause__ or "").splitlines()
    return f"{text}: {cause[0]}" if cause and cause[0] not in text else text
