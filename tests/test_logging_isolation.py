"""Tests leave the root logger as they found it (tests/conftest.py, ``_restore_root_logging``).

The two tests run in file order on one worker (``--dist=loadfile``): the first installs the CLI's
handler, the second checks that it is gone before it starts.
"""

from __future__ import annotations

import logging

from purer.tracking import setup_logging


def _cli_handlers() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if not type(h).__module__.startswith("_pytest")]


def test_cli_logging_setup_installs_a_stderr_handler():
    setup_logging(verbose=True)
    assert len(_cli_handlers()) == 1
    assert logging.getLogger().level == logging.DEBUG


def test_a_later_test_starts_without_the_earlier_handler(capsys):
    assert _cli_handlers() == []
    assert logging.getLogger().level != logging.DEBUG
    logging.getLogger("purer.test").warning("goes to pytest's capture, not a closed stream")
    assert "Logging error" not in capsys.readouterr().err
