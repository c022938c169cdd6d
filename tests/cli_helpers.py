"""What the command-line tests share: one check for the one-line error contract."""

from __future__ import annotations


def one_line_error(result, *needles: str) -> str:
    """Assert ``result`` (a click CliRunner result) is a user mistake: exit status 2, no
    traceback, exactly one ``attnlab: error:`` line, holding every one of ``needles``."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("attnlab: error:")]
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]
