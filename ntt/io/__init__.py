"""Files in and out, checked at the edge: images (``images``), COCO files (``coco``: instances and results, read
and written; ``coco_check``: what a file must hold; ``rle``), COCO evaluation (``evaluation``), input paths named
before they are opened (``inputs``), output paths checked before any work (``outputs``), every file write
atomic (``atomic``), and unit-norm vectors as compact bytes (``vectors``).

May import: the base modules (``ntt.config``, ``ntt.types``, ``ntt.geometry``, ...). Nothing else of ntt.
"""
