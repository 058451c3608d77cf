"""The prediction, model-facing: prompts (``prompts``), the stage-by-stage predictor where faithfulness to the
paper lives (``predictor``: encode -> propose -> match -> select), its post-processing (``postprocess``), and many
images at a time (``segmenter``: loading ahead with ``loader``, batch sizes, out-of-memory back-off, the cache).

May import: the base modules, ``ntt.io``, ``ntt.models``, ``ntt.bank``, ``ntt.cache``.
"""
