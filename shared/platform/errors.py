"""Errors that end a run with one clear line for the user (no traceback)."""


class ExportError(Exception):
    """A fatal problem with the export's source or configuration: the run fails before anything is sent."""


class SourceError(ExportError):
    """The source cannot be read whole (missing, not JSON, no such entity, unreadable partition...)."""


class ConfigError(ExportError):
    """The export configuration does not fit the source (e.g. the email field is not a column)."""
