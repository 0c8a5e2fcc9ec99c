"""Shared helpers for tests that drive the ``synref`` command line in-process."""
from synref.cli import main


def run(args, capsys):
    """``main(args)`` -> (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, *needles):
    """Exit code 2, exactly one non-empty stderr line, no traceback, each needle in that line."""
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
