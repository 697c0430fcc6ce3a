"""JWT access-token revocation that reaches every app process in milliseconds.

The front door: every public name is importable from here.
"""

from .client import RevocationClient, Status
from .errors import (
    ConfigError,
    InvalidToken,
    MissingToken,
    NotReplicated,
    PropagationTimeout,
    RevocationError,
    RevocationUnavailable,
    StoreUnavailable,
    TokenRevoked,
    TryRefreshToken,
    Unauthorised,
)
from .events import Revocation
from .revoker import Revoker
from .settings import Settings
from .tokens import Session, TokenIssuer, TokenVerifier
from .worker import Publisher

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "InvalidToken",
    "MissingToken",
    "NotReplicated",
    "PropagationTimeout",
    "Publisher",
    "Revocation",
    "RevocationClient",
    "RevocationError",
    "RevocationUnavailable",
    "Revoker",
    "Session",
    "Settings",
    "Status",
    "StoreUnavailable",
    "TokenIssuer",
    "TokenRevoked",
    "TokenVerifier",
    "TryRefreshToken",
    "Unauthorised",
    "__version__",
]
