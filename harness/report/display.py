"""Tables and PNGs shown where the user is: rendered in a notebook, printed (paths for images)
in a terminal."""
from __future__ import annotations

import pandas as pd


def in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return getattr(get_ipython(), "kernel", None) is not None     # a Jupyter/Colab kernel, not a terminal


def display(table: pd.DataFrame | None = None, images=()) -> None:
    """A table and PNGs: rendered in a notebook, printed (paths for images) elsewhere."""
    if in_notebook():
        from IPython.display import Image
        from IPython.display import display as show
        if table is not None:
            show(table)
        for p in images:
            show(Image(filename=str(p)))
        return
    if table is not None:
        with pd.option_context("display.width", 200, "display.max_columns", None):
            print(table.to_string(index=False, na_rep="-"))
    for p in images:
        print(f"  plot: {p}")
