"""raddist's user-facing errors (raddist.errors) carry what went wrong and where, in one line."""

import pytest

from raddist.errors import ConfigError, InputError, ManifestError, RaddistError, StorageError


@pytest.mark.parametrize("error", [ConfigError, ManifestError, StorageError, InputError])
def test_every_user_error_is_a_raddist_error(error):
    assert issubclass(error, RaddistError) and issubclass(error, Exception)


def test_storage_and_input_errors_keep_the_uri_and_the_cause():
    e = StorageError("s3://bucket/cache/meta.json", "AccessDenied")
    assert str(e) == "s3://bucket/cache/meta.json: AccessDenied" and (e.uri, e.cause) == ("s3://bucket/cache/meta.json",
                                                                                          "AccessDenied")
    e = InputError("/data/p1/scan.dcm", "no pixel data")
    assert str(e) == "/data/p1/scan.dcm: no pixel data" and e.reason == "no pixel data"  # the reason alone names no file
    assert "\n" not in str(e)
