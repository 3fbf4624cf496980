"""The one exception type a user can cause; the CLI prints it in one line and exits with code 2."""


class PhysgenError(Exception):
    """A problem with the user's input, named together with its fix."""
