"""User-facing errors. main.py turns a UserError into a one-line message and exit code 2.

Unknown names suggest the nearest valid one (as lm-evaluation-harness's registry does).
"""
import difflib


class UserError(ValueError):
    """Bad input that the user can fix: bad config, unknown name, unusable dataset or folder."""


def unknown(kind: str, name: str, valid) -> UserError:
    valid = sorted(valid)
    lower = {v.lower(): v for v in valid}  # GPT2 -> gpt2: case is the likeliest slip
    near = difflib.get_close_matches(str(name).lower(), list(lower), n=1, cutoff=0.5)
    hint = f" Did you mean '{lower[near[0]]}'?" if near else ""
    return UserError(f"unknown {kind} '{name}'. Valid: {', '.join(valid)}.{hint}")


class Terminated(KeyboardInterrupt):
    """SIGTERM (a Slurm time limit, `timeout`, `kill`), raised where Ctrl-C's KeyboardInterrupt
    would be, so both end a sweep the same way."""


class Interrupted(Exception):
    """A sweep stopped by Ctrl-C or SIGTERM after saving what finished: its folder and exit code
    (130 for Ctrl-C, 143 for SIGTERM)."""

    def __init__(self, folder, code: int):
        super().__init__(f"interrupted: {folder}")
        self.folder, self.code = folder, code
