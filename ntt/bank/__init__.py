"""The memory bank: the file of shot prototypes and its rules (``memory``: ``MemoryBank``; ``checks``: what each
part must be; ``file``: changing a bank file under a lock, only if it is still what was read), how a bank is
built from references (``encoder``), taught new positive and negative shots without re-encoding (``teach``), and
the paper's shot sampling (``sampling``).

May import: the base modules, ``ntt.io``, ``ntt.models``.
"""

from ntt.bank.checks import BankError
from ntt.bank.memory import MemoryBank, describe_shot, on_image, same_label

__all__ = ["BankError", "MemoryBank", "describe_shot", "on_image", "same_label"]
