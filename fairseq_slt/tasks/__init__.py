from . import translation_slt  # noqa: F401  (registers the translation_slt task)
