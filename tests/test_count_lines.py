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


def test_a_named_top_level_definition_is_left_out_whole():
    """``leave_out`` drops the named function (decorator and docstring included) and the named assignment;
    the other definitions count as before."""
    source = (
        'import x\n\n\n@x.deco\ndef new(a):\n    """Doc."""\n    return a  # why\n\n\n'
        "NEW_TABLE = {\n    1: 2,\n}\n\n\ndef old():\n    return 1\n"
    )
    # 16 lines: code import, decorator, def new, return a, 3 table lines, def old, return 1; prose the docstring
    assert _count()(source) == (16, 9, 1)
    assert _count()(source, frozenset({"new", "NEW_TABLE"})) == (9, 3, 0)  # import, def old, return 1
