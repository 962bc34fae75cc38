"""The split-file format every module shares, and the one error type for bad input data.

A split file is a comma-separated table with the RecBole-style columns ``user_id:token``,
``item_id:token`` and ``rating:float``. This module imports nothing of the project, so any
module may use it without an import cycle.
"""

USER_COL, ITEM_COL, RATING_COL = "user_id:token", "item_id:token", "rating:float"
TRAIN_RATINGS = (0.5, 1.0, 2.0, 3.0, 4.0, 4.5, 5.0)
EVAL_RATINGS = (1.0, 2.0, 3.0, 4.0, 5.0)  # raw ratings; 0.5/4.5 exist only after refinement
# the LLM refinement rewrites only neutral ratings: 2/3 -> 0.5 (negative) or 4.5 (positive)
NEUTRAL_RATINGS, REFINED_RATINGS = (2.0, 3.0), (0.5, 4.5)


class DataError(Exception):
    """A problem with the input data, reported to the user as one line (exit code 2)."""
