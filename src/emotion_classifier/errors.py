"""The error every stage reports as one line: a problem the user must fix, never a bug."""


class PipelineError(RuntimeError):
    """A problem with the data or the environment that the user must fix; the message says how."""
