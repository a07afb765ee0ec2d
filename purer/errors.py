"""User-facing errors.

Every problem caused by the user's input (config, dataset, checkpoint, manifest) is raised as a
:class:`PurerError` whose message names the file or key and what was expected. The CLI turns it
into one line on stderr and a non-zero exit code, never a traceback.
"""


class PurerError(Exception):
    """An error in the user's input, reported as one clear message."""


class ConfigError(PurerError):
    """A config file or override that does not match the schema."""


class DataError(PurerError):
    """A dataset that is missing, corrupt or inconsistent."""


class CheckpointError(PurerError):
    """A checkpoint or manifest that is missing, truncated or does not match its architecture."""


class OutputError(PurerError):
    """An output that cannot be written: a read-only or full disk, a file where a folder should be,
    a folder that is not a purer output, or one that another purer process is writing."""
