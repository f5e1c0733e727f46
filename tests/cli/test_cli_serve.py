"""`icseg serve`: its help lists every setting of the service."""

from __future__ import annotations

import pytest

from app.settings import Settings
from cli.main import build_parser


def test_serve_help_lists_every_setting(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    out = capsys.readouterr().out
    for name in Settings.model_fields:
        assert f"ICSEG_{name.upper()}" in out
    assert "--host" in out and "--port" in out
