"""scripts/count_lines.py: the raw / code / prose split behind the line budget quoted for issue 8."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "count_lines.py"


def _count():
    spec = importlib.util.spec_from_file_location("count_lines", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.count


def test_docstrings_comments_and_blank_lines_are_told_apart():
    source = (
        '"""Module doc,\ntwo lines."""\n\n# a comment\nX = 1\n\n\n'
        'def f():\n    """One line."""\n    return X  # trailing\n'
    )
    # 10 lines: 3 docstring, 1 comment, 3 blank, 3 code (X = 1, def, return)
    assert _count()(source) == (10, 3, 4)


def test_a_blank_line_inside_a_docstring_is_prose_only():
    """Counted as prose, not also as blank: adding one must not lower the code count."""
    source = 'def f():\n    """Summary.\n\n    More."""\n    return 1\n'
    # 5 lines: def and return are code; the docstring's 3 lines (its blank one included) are prose
    assert _count()(source) == (5, 2, 3)
