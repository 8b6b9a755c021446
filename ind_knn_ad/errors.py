"""The library's errors: what went wrong, in the library's own terms.

Each message names the file, folder or setting and the problem, never a command-line flag:
the commands (`ind_knn_ad.cli`) map each class to an exit code and word setting errors as
flags. Any other exception is a bug. Standard library only, so scoring can import it.
"""

from __future__ import annotations


class ImageError(Exception):
    """An image file that cannot be used; the message names the file and the problem."""


class DatasetError(Exception):
    """A dataset folder that cannot be used; the message names the folder and the problem."""


class DownloadError(Exception):
    """A dataset could not be fetched; the message says where to put the data by hand."""


class ModelFileError(Exception):
    """A model file that cannot be used; the message names the file and the problem."""


class BackboneError(Exception):
    """The backbone or its weights cannot be had; the message says what to do instead."""


class WriteError(Exception):
    """An output that could not be written; the message names it."""


class ConfigError(ValueError):
    """Settings that cannot work together, with these images or on this machine.

    `setting` is the setting's name (`FitConfig`'s field, or `device`), so that a command
    can say which of its options to change; the message reads on its own without it.
    """

    def __init__(self, message: str, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting
