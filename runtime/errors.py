"""Errors that are the user's to fix. The CLI turns them into one clear line and an exit status."""


class UserError(Exception):
    """Base of every error caused by user input (model, config, program file, input arrays)."""

    exit_code = 2


class ProgramError(UserError):
    """A program file is corrupt, truncated, of another format version, or fails its checksum."""

    exit_code = 3


class ConfigError(UserError):
    """A hardware configuration (preset, TOML file or embedded config) has a bad key, type or value."""

    exit_code = 2


class RunInputError(UserError):
    """An input array given to the simulator has the wrong shape or dtype."""

    exit_code = 2
