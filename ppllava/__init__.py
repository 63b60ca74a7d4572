"""PPLLaVA: a video LLM whose visual tokens are pooled with the CLIP relevance of the user's prompt.

The custom ops and device facts live in the separate `backends` package; this package holds the
model, data, training, inference, evaluation and the `ppllava` command line.
"""

__version__ = "0.1.0"
