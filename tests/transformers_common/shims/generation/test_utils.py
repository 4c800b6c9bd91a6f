"""Stand-in for transformers' tests/generation/test_utils.py (not in the sdist).

`GenerationTesterMixin` holds the `generate()` tests; only testers of generative models inherit it, and
test_modeling_common.py merely checks that a tester inherits it exactly when its model can generate. PaCa-ViT
models cannot generate, so an empty class keeps that check meaningful.
"""


class GenerationTesterMixin:
    pass
