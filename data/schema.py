"""The split-file format every module shares, the one id-ordering rule, and the error type
for bad input data.

A split file is a comma-separated table with the RecBole-style columns ``user_id:token``,
``item_id:token`` and ``rating:float``. This module imports nothing of the project but the
error base class, so any module may use it without an import cycle.
"""
import re

import numpy as np
import pandas as pd

from data.errors import UserError

USER_COL, ITEM_COL, RATING_COL = "user_id:token", "item_id:token", "rating:float"
TRAIN_RATINGS = (0.5, 1.0, 2.0, 3.0, 4.0, 4.5, 5.0)
EVAL_RATINGS = (1.0, 2.0, 3.0, 4.0, 5.0)  # raw ratings; 0.5/4.5 exist only after refinement
# the LLM refinement rewrites only neutral ratings: 2/3 -> 0.5 (negative) or 4.5 (positive)
NEUTRAL_RATINGS, REFINED_RATINGS = (2.0, 3.0), (0.5, 4.5)


class DataError(UserError):
    """A problem with the input data."""


_CANONICAL_INT = re.compile(r"-?(0|[1-9][0-9]{0,17})")


def canonical_int_ids(ids) -> bool:
    """True when every id is an integer written canonically (no sign but '-', no leading
    zero, no padding), so that reading it as a number loses nothing: '0439023483' (an ISBN)
    is not one."""
    values = [str(v) for v in pd.unique(pd.Series(ids, dtype=object).dropna())]
    return bool(values) and all(_CANONICAL_INT.fullmatch(v) for v in values)


def sorted_ids(ids) -> np.ndarray:
    """The one id order of the project: the unique ids (as strings) in ascending numeric
    order when every id is a canonical integer (as pandas reads such a column, and so the
    reference orders it), else in lexicographic order."""
    unique = np.asarray([str(v) for v in pd.unique(pd.Series(ids, dtype=object).dropna())],
                        dtype=object)
    if canonical_int_ids(unique):
        return unique[np.argsort(unique.astype(np.int64), kind="stable")]
    return unique[np.argsort(unique.astype(str), kind="stable")]
