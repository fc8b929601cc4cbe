"""Domain exceptions. The CLI turns every ``KitError`` into one line and exit code 1.

A ``KitError`` is a user mistake or an environment problem the user can fix; anything else
is a bug in the kit and keeps its traceback.
"""


class KitError(Exception):
    """Base class for errors the user can act on."""


class RecipeError(KitError):
    """The recipe file is unreadable or a field is invalid."""


class DataError(KitError):
    """The line's images or manifest cannot be used as the recipe says."""


class CheckpointError(KitError):
    """A checkpoint is missing, unsafe, or does not fit the recipe."""


class RunDirError(KitError):
    """A run directory is missing a stage's output or belongs to another recipe."""


class TrainingDiverged(KitError):
    """The loss became NaN or infinite; the best checkpoint so far is kept."""
