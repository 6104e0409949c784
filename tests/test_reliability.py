"""Hostile photos and mutated model files into classify: no crash, no hang, the right exits.

CI runs a small count of the same generator as `tests/reliability/hostile.py` (which prints
the table in docs/reliability.md with the full counts).
"""

import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "tests" / "reliability"))

import hostile  # noqa: E402


@pytest.mark.slow
def test_hostile_photos_and_mutated_models_neither_crash_nor_hang(shipped, real_data, tmp_path):
    hostile.FAILURES.clear()
    report = tmp_path / "reliability.md"
    code = hostile.main([str(shipped / "plus_int8.tflite"), str(shipped / "plus_int8.onnx"),
                         "--photos", str(real_data / "test"), "--mutations", "25",
                         "--keras", str(shipped / "plus.keras"),
                         "--report", str(report)])
    assert code == 0, hostile.FAILURES
    table = report.read_text()
    assert "| photos, each alone (" in table and "| export/parity.py: " in table
    assert "| train/run.py: one bad photo" in table and "plus_int8.onnx: " in table


def test_the_verdicts_catch_what_they_are_for():
    hostile.FAILURES.clear()
    assert hostile.classify_outcome("signal SIGSEGV", "", "exit 0 or 2", "m") == "crash"
    assert hostile.classify_outcome("exit 1", "Traceback (most recent call last):", "exit 1",
                                    "p") == "crash"
    assert hostile.classify_outcome("hang", "", "exit 1", "p") == "hang"
    assert hostile.classify_outcome("exit 2", "error: a\nerror: b", "exit 0 or 2", "m") == \
        "wrong exit"
    assert hostile.classify_outcome("exit 1", "", "exit 0 or 2", "m") == "wrong exit"
    assert hostile.classify_outcome("exit 2", "error: one line", "exit 0 or 2", "m") == "ok"
    assert len(hostile.FAILURES) == 5
    hostile.FAILURES.clear()
