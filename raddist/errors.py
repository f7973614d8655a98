"""Errors that name what went wrong and where, so a user can fix their input."""


class RaddistError(Exception):
    """Base class for errors raddist reports to the user without a traceback."""


class ConfigError(RaddistError):
    """A sweep spec is invalid. The message names the field and the allowed values."""


class ManifestError(RaddistError):
    """A manifest is missing or violates its schema. The message names the URI, row or column."""


class StorageError(RaddistError):
    """Storage could not be reached, or refused (network, credentials, permission, throttling, a
    missing bucket), after the storage library's own retries. Not a fault of any one image: it fails
    the work that needed the storage rather than being recorded per row."""

    def __init__(self, uri: str, cause: str):
        super().__init__(f"{uri}: {cause}")
        self.uri = uri
        self.cause = cause


class InputError(RaddistError):
    """One image or volume could not be read or decoded. Recorded per row; the run goes on."""

    def __init__(self, uri: str, reason: str):
        super().__init__(f"{uri}: {reason}")
        self.uri = uri
        self.reason = reason
