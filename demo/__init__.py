"""The embedded default job: a synthetic inspection data set, built into an index and scored (patchcore-demo)."""
