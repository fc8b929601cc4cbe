"""Edge-side exceptions; the kit's CLI reports them as one line, like its own errors."""


class DeployError(Exception):
    """Base class for errors on the edge side that the user can act on."""


class ImageReadError(DeployError):
    """An image file cannot be decoded."""
