"""Which exceptions are the user's input errors (printed as one line by the CLI)."""

from __future__ import annotations


def is_user_error(e: BaseException) -> bool:
    """True for typed errors that name a bad input; False for bugs (shown with a traceback)."""
    from featbank.experiments.config import ConfigError
    from featbank.store.errors import StoreError

    user_types: tuple[type[BaseException], ...] = (ConfigError, StoreError, FileNotFoundError)
    try:
        from featbank.extract.errors import ExtractError

        user_types += (ExtractError,)
    except ImportError:
        pass
    return isinstance(e, user_types)
