"""The image's entry point configures the root logger as a container's main program does
(``logging.basicConfig(force=True)`` on the stdout of the moment, and OncoReg's ``debug.log``);
called in-process by these tests, it would leave handlers on pytest's closed capture streams for the
tests after them. Each test here gets the root logger back as it found it."""

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def root_logger_restored() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)
