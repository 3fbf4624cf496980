"""The one exception type a user can cause; the CLI prints it in one line and exits with code 2."""


class PhysgenError(Exception):
    """A problem with the user's input, named together with its fix."""


class DatasetMissing(PhysgenError):
    """A dataset that does not exist (one that exists but fails its checks raises a plain PhysgenError): only a
    missing dataset may be generated in its place."""
