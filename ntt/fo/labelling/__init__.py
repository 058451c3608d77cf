"""Labelling a dataset with a bank: ``segment`` (written per batch, first writer wins: ``writes``), what a
predictions field records about its bank (``provenance``), a bank as a FiftyOne model for ``apply_model`` and the
zoo (``model``), and FiftyOne's COCO evaluation restricted to what the bank can know (``evaluate``).

May import: the core, the FiftyOne base modules, ``ntt.fo.banks``, ``ntt.fo.review`` (the record a reviewer's
corrections are read against).
"""
