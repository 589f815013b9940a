"""r1py's exceptions: one class per r1-core ``ErrorCode``, all subclasses of :class:`R1Error`."""


class R1Error(Exception):
    """Base class of every error r1 raises. ``code`` is r1-core's stable error code name."""

    code = "internal"


class InvalidArgument(R1Error, ValueError):
    """An argument's value is unusable (a token id past the vocabulary, a bad sampling value)."""

    code = "invalid_argument"


class InvalidUtf8(R1Error, ValueError):
    """Text that must be UTF-8 is not."""

    code = "invalid_utf8"


class ModelNotFound(R1Error, FileNotFoundError):
    """A file could not be found, opened or read."""

    code = "io"


class FormatError(R1Error, ValueError):
    """A file is malformed: config, weights, tokenizer."""

    code = "format"


class Unsupported(R1Error):
    """A model, tensor type or option r1 does not implement."""

    code = "unsupported"


class ContextFull(R1Error):
    """The prompt does not fit in the model's context."""

    code = "context_full"


class Cancelled(R1Error):
    """The work was stopped by the caller."""

    code = "cancelled"


class TemplateError(R1Error):
    """A chat template failed to compile or render."""

    code = "template"


class InternalError(R1Error):
    """A bug in r1 (never the caller's fault)."""

    code = "internal"
