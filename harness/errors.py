"""User-facing errors. main.py turns a UserError into a one-line message and exit code 2.

Unknown names suggest the nearest valid one (as lm-evaluation-harness's registry does).
"""
import difflib


class UserError(ValueError):
    """Bad input that the user can fix: bad config, unknown name, unusable dataset or folder."""


def unknown(kind: str, name: str, valid) -> UserError:
    valid = sorted(valid)
    near = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.5)
    hint = f" Did you mean '{near[0]}'?" if near else ""
    return UserError(f"unknown {kind} '{name}'. Valid: {', '.join(valid)}.{hint}")
