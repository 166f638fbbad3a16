"""Errors the test harness raises on purpose.

    HarnessError
    ├── DockerUnavailable      no Docker Engine answers (or the docker SDK is missing)
    └── ImageBuildError        building the base image, the wheelhouse or the node image failed
"""

from __future__ import annotations


class HarnessError(Exception):
    """Root of every error the harness raises on purpose; the message says what to do."""


class DockerUnavailable(HarnessError):
    """No Docker Engine could be reached."""


class ImageBuildError(HarnessError):
    """An image (or the wheelhouse it is built from) could not be built.

    `log_tail` holds the last lines of the failing tool's output, when there is one.
    """

    def __init__(self, message: str, log_tail: str = "") -> None:
        if log_tail:
            message = f"{message}\n--- last lines of the build log ---\n{log_tail}"
        super().__init__(message)
        self.log_tail = log_tail
