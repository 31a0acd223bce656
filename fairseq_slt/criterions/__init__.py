from . import label_smoothed_cross_entropy_slt  # noqa: F401  (registers the criterion)
