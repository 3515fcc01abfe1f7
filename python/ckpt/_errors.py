"""Exceptions raised by ckpt, mirroring the C++ library's ckpt::Error hierarchy.

Every error carries the C++ message (``str(e)``: ``file: record 'r': offset 0x1a3: message``)
and its parts as attributes: ``message``, ``file``, ``record`` and ``offset`` (``None`` when
unknown).
"""
import builtins
import pickle


class Error(Exception):
    """Base class of every error ckpt raises (C++ ``ckpt::Error``)."""

    message = None
    file = None
    record = None
    offset = None


class IoError(Error, OSError):
    """The operating system refused: open, read, write... (``errno`` is set)."""


class FormatError(Error):
    """The bytes are damaged or not what the format says."""


class LimitError(FormatError):
    """A size or count from the file passes a configured limit."""


class UnsupportedError(Error):
    """The file is recognised but uses something ckpt does not implement."""


class UnsafeError(Error, pickle.UnpicklingError):
    """Loading would import or call something outside the weights-only allow-list.

    Also a ``pickle.UnpicklingError``, which is what ``torch.load(weights_only=True)``
    raises for the same files.
    """


class TypeError(Error, builtins.TypeError):  # noqa: A001 (mirrors ckpt::TypeError)
    """The content is valid but not what was asked for (or a key is missing)."""


__all__ = ["Error", "IoError", "FormatError", "LimitError", "UnsupportedError", "UnsafeError", "TypeError"]
