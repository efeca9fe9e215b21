"""Exit codes: every error class that sets its own exit code has a distinct one (a script
tells the failures apart by it; subclasses that don't set one share their parent's)."""

from __future__ import annotations

import inspect

from memosys import errors


def test_exit_codes_are_distinct() -> None:
    own = {name: cls.exit_code for name, cls in inspect.getmembers(errors, inspect.isclass)
           if issubclass(cls, errors.MemosysError) and "exit_code" in vars(cls)}
    assert len(set(own.values())) == len(own), own
    assert own["ActivationError"] == 11 and own["AuthenticationError"] == 9
