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


class ShadowError(KitError):
    """The decision logs or the inspectors' CSV cannot be joined as given, or a file is not a shadow result."""


class ArgumentError(KitError):
    """An argument of a library call has a value the call cannot use.

    ``argument`` names the parameter; the message may name parameters as ``{name}``. ``str()``
    spells them as Python parameters; a front end words them its own way (the CLI: as its options,
    ``{overwrite}`` -> ``--force``), so the library never speaks in CLI flags.
    """

    def __init__(self, argument: str, message: str, *, prefix: bool = True) -> None:
        self.argument, self.message, self.prefix = argument, message, prefix
        super().__init__(self.worded(lambda name: name))

    def worded(self, spell) -> str:
        """The message with every parameter written by ``spell(name)``."""

        class _Spelled(dict):
            def __missing__(self, key: str) -> str:
                return spell(key)

        text = self.message.format_map(_Spelled())
        return f"{spell(self.argument)}: {text}" if self.prefix else text
