"""The prediction, model-facing: prompts (``prompts``), the stage-by-stage predictor where faithfulness to the
paper lives (``predictor``: encode -> propose -> match -> select), its post-processing (``postprocess``), many
images at a time (``segmenter``: loading ahead with ``loader``, batch sizes, out-of-memory back-off, the cache),
and one cached DINOv2 vector per whole image (``image_embeddings``).

May import: the base modules, ``ntt.io``, ``ntt.models``, ``ntt.bank``, ``ntt.cache``.
"""
