"""The review loop's way back into a bank: a reviewer's verdicts and edits (``corrections``: what changed in the
App's Annotate tab), negatives and promotion of reviewed predictions (``feedback``), the references grading
themselves on the dataset, stored as a run (``grades``), the views of reference shots (``views``), and which
samples to label next (``suggest``).

May import: the core, the FiftyOne base modules (``references``, ``checks``, ``store``, ``outages``) and
``ntt.fo.banks``.
"""
