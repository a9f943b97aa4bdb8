"""One fold of a downstream evaluation: the validation carve of its training split, the labels (optionally
shuffled, the permutation control), and the protocol, on frozen features or by fine-tuning."""

from __future__ import annotations

import numpy as np

from xkd.errors import UsageError
from xkd.evaluation import datasets as eval_datasets
from xkd.evaluation import finetune as eval_finetune
from xkd.evaluation import protocols as eval_protocols


def evaluate_fold(
    fold: eval_datasets.Fold,
    row: dict[str, int],
    feats: dict,
    ds: eval_datasets.DatasetInfo,
    protocol: str,
    settings: dict,
    *,
    shuffle_labels: bool,
    finetune_args: tuple | None = None,
) -> dict:
    """Score `fold` on the samples present in the cache (`row`: clip id -> feature row); hyper-parameters are
    chosen on a group-wise validation carve of the training split, never on the test fold. `finetune_args`
    = (bundle, role, reader) for protocol finetune."""
    train = [s for s in fold.train if s.clip_id in row]
    test = [s for s in fold.test if s.clip_id in row]
    fit_idx, val_idx = eval_datasets.validation_carve(train, settings.get("val_fraction", 0.2))
    if not fit_idx or not val_idx or len({train[i].label for i in fit_idx}) < 2:
        raise UsageError(
            f"{ds.name} fold {fold.fold}: {len(train)} training samples in the cache are too few for "
            f"a validation carve (fit {len(fit_idx)}, val {len(val_idx)}, need two classes to fit)"
        )
    tr = {k: v[[row[s.clip_id] for s in train]] for k, v in feats.items()}
    te = {k: v[[row[s.clip_id] for s in test]] for k, v in feats.items()}
    y_tr = np.array([s.label for s in train], dtype=object if ds.metric == "map" else int)
    if shuffle_labels:  # permutation control: the same pipeline must fall to chance
        y_tr = y_tr[np.random.default_rng(fold.fold).permutation(len(y_tr))]
    y_te = np.array([s.label for s in test], dtype=object if ds.metric == "map" else int)
    if protocol == "finetune":
        bundle, role, reader = finetune_args
        r = eval_finetune.finetune(bundle, role, ds.modality, reader, train, test, fit_idx, val_idx, settings)
    elif protocol == "svm":
        r = eval_protocols.svm(tr, y_tr, te, y_te, fit_idx, val_idx, [float(c) for c in settings["C"]])
    else:
        r = eval_protocols.linear(
            tr,
            y_tr,
            te,
            y_te,
            fit_idx,
            val_idx,
            epochs=settings.get("epochs", 50),
            lr=float(settings.get("lr", 1e-3)),
            dropout=settings.get("dropout", 0.0),
            weight_decay=float(settings.get("weight_decay", 0.0)),
            multilabel=ds.metric == "map",
        )
    return {
        "fold": fold.fold,
        **r,
        "selected_on": "val",
        "n_train": len(train),
        "n_test": len(test),
        "n_val": len(val_idx),
        "missing_in_cache": len(fold.train) + len(fold.test) - len(train) - len(test),
        **({"fold_meta": fold.meta} if fold.meta else {}),  # what the fold holds out (speaker, images)
    }
