"""NTT as a FiftyOne zoo model source: ``foz.load_zoo_model("ntt-sam2-dinov2", dataset=ds, bank="pets")``.

FiftyOne imports this file from its model zoo folder (``nfo.register_zoo_source()`` puts it there, offline), so
it imports ntt lazily. "Downloading" fetches nothing: the checkpoints are the ones ntt resolves (a path, an env
var or its cache), checked when the model loads.
"""

from __future__ import annotations

import json


def download_model(model_name: str, model_path: str) -> None:
    """Nothing to fetch: the checkpoints are the ones ntt resolves (the bank's settings say which), checked when
    the model loads, where a missing one is named with where it goes. Writes a note, so FiftyOne sees it here."""
    with open(model_path, "w") as f:
        json.dump({"model": model_name, "weights": "resolved by ntt when the model loads (README: Checkpoints)"}, f)


def load_model(model_name: str, model_path: str, dataset=None, bank: str | None = None, **kwargs):
    """The ``NTTModel`` of bank ``bank`` of ``dataset`` (``ntt.fo.load_model``: ``preset``, ``config``,
    ``device``, ``cache`` as there)."""
    from ntt.fo import NTTFiftyOneError
    from ntt.fo import load_model as load_bank_model

    if dataset is None or bank is None:
        raise NTTFiftyOneError(
            f"{model_name} segments with a memory bank: load it with the dataset and one of its banks, "
            "foz.load_zoo_model(name, dataset=ds, bank='pets')"
        )
    return load_bank_model(dataset, bank, **kwargs)
