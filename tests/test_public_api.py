from __future__ import annotations

import inspect

import revocation
from revocation import errors


def test_the_contracted_names_are_importable_from_the_package() -> None:
    from revocation import (  # noqa: F401
        ConfigError,
        InvalidToken,
        Revocation,
        RevocationClient,
        RevocationError,
        RevocationUnavailable,
        Revoker,
        Session,
        Settings,
        TokenIssuer,
        TokenRevoked,
        TryRefreshToken,
        Unauthorised,
    )


def test_every_public_exception_is_exported() -> None:
    public = {
        name
        for name, obj in inspect.getmembers(errors, inspect.isclass)
        if issubclass(obj, Exception) and obj.__module__ == errors.__name__
    }
    assert public <= set(revocation.__all__)


def test_error_codes_and_hierarchy() -> None:
    assert revocation.InvalidToken.code == "invalid_token"
    assert revocation.TryRefreshToken.code == "try_refresh_token"
    assert revocation.TokenRevoked.code == "token_revoked"
    assert revocation.RevocationUnavailable.code == "revocation_unavailable"
    assert revocation.ConfigError.code == "config_error"
    for cls in (revocation.InvalidToken, revocation.TryRefreshToken, revocation.TokenRevoked):
        assert issubclass(cls, revocation.Unauthorised)
    for cls in (revocation.Unauthorised, revocation.RevocationUnavailable, revocation.ConfigError):
        assert issubclass(cls, revocation.RevocationError)
