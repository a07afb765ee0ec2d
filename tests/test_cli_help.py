"""The ``purer`` command line's own texts: ``--version`` and the steps' ``--help``."""

from __future__ import annotations

import pytest

from purer import __version__
from purer.cli.main import COMMANDS, main, plain_text


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"purer {__version__}"


def test_plain_text_drops_rst_literal_markup():
    assert plain_text("  Writes ``<run>/a.json`` and ``b``.\n") == "Writes <run>/a.json and b."


@pytest.mark.parametrize("step", sorted(COMMANDS))
def test_step_help_has_no_rst_markup(step, capsys):
    with pytest.raises(SystemExit) as stop:
        main([step, "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert f"usage: purer {step}" in text
    assert "``" not in text
