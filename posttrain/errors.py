"""Errors a user can act on. The CLI prints their message without a traceback and exits with status 2."""


class PosttrainError(Exception):
    """Base class: the message names the file, line, row or key at fault and what was expected."""


class ConfigError(PosttrainError):
    """A config file or override is malformed, names an unknown key, or has a value of the wrong type or range."""


class DataError(PosttrainError):
    """A dataset is missing, malformed, empty, or has a row that cannot be used."""


class ModelLoadError(PosttrainError):
    """A model spec cannot be resolved or loaded."""


class MissingExtraError(PosttrainError):
    """An optional dependency is not installed; the message names the extra to install."""


def require(module: str, extra: str, purpose: str):
    """Import an optional dependency or raise a MissingExtraError that says which extra provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{purpose} needs the '{module}' package: pip install 'posttrain[{extra}]' (import failed: {exc})"
        ) from None
