"""Usefulness from the seed rows alone: leakage-free cross-validation, for users without a holdout.

Most users have ~50 labeled rows and no holdout, so "does the synthetic data help?" has to be answered
from the seed rows themselves. Each seed (train split) row is held out in turn and predicted by the
holdout usefulness's classifier (TF-IDF word 1-2 grams + logistic regression, `usefulness.py`) trained
on (a) the other seed rows (real only) and (b) the other seed rows + the curated synthetic rows whose
prompt never showed a held-out row. Macro-F1 of the pooled out-of-fold predictions of (a) and (b), their
difference Δ = (b) - (a), and a paired bootstrap CI of Δ over the seed rows.

**Leakage rule.** A synthetic row generated from a prompt that showed seed row *s* (a few-shot demo, or
the anchor row a rewrite paraphrases; `expanded_prompts.demo_ids`, linked through `prompt_id`) is
never in the training set of a fold that holds out *s*: it may be a paraphrase of *s*, and training on
it inflates the estimate. A synthetic row whose prompt is unknown (`shown` None) is used in no fold.
Residual optimism not covered by lineage: curation filters trained on the seed rows (label checks)
chose which synthetic rows survive, knowing every seed row.

**Shapes.** `seed_*`: n seed rows (ids, texts, labels); `synthetic_*`: m curated rows (texts, labels,
and per row the collection of seed ids its prompt showed). Result: two macro-F1 over the n seed rows'
out-of-fold predictions, Δ with a 95% CI from `bootstrap_samples` resamples of the n rows (the same
resamples for both arms), n, the folds, and the average share of synthetic rows kept per fold.

**Method and cost.** Leave-one-out while n * (n + m) <= `LOO_MAX_WORK` (about 15 s of one core here: 50
seed rows with up to 1150 synthetic rows), else stratified 10-fold (shuffled with `seed`; 2.5 s for 96
seed + 839 synthetic rows), which costs about 10 / n of LOO: 2 logistic fits per fold, one on the other
seed rows and one on them plus the kept synthetic rows; the measurements behind the choice are above
`LOO_MAX_WORK`. Words are counted once for all n + m texts (tokenizing uses no label); per fold only the
IDF weights are recomputed from the fold's training rows. The features therefore equal those of a
TfidfVectorizer fitted on the fold's training texts (same vocabulary, IDF and l2 norm: an n-gram absent
from the fold's training rows weighs 0, in the held-out row too, where it would otherwise shrink the
row's norm), so each fold's model is the one `train_and_predict` would train, and the numbers equal a
naive loop over it. A vocabulary and IDF fitted once on all texts would not be: on a TREC draw (96 seed
rows, 839 curated) it lowered the LOO macro-F1 of (b) from 0.645 to 0.579, because the excluded
paraphrases put the held-out row's own n-grams into the vocabulary with no weight behind them. The fits
run on one thread (`usefulness.single_threaded`). The bootstrap resamples the n out-of-fold predictions,
so its CI ignores the variance from retraining: read it as a lower bound on the uncertainty.
"""

from __future__ import annotations

import time
import warnings
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from synth_assets.evaluation.usefulness import (
    TOKENIZER_OPTIONS,
    _encode,
    _interval,
    logistic_regression,
    scores,
    single_threaded,
)

# How folds are chosen, measured on this 2-core box beside a running model benchmark (CPU seconds of
# one core; a TREC draw of the usefulness benchmark: 96 seed rows, 839 curated rows, 6 labels, 4 demos
# per prompt, 1000 bootstrap resamples):
# - leave-one-out: 24 s (192 logistic fits; those on ~930 rows take ~0.13 s, half of it scipy's
#   L-BFGS-B step on 6 x 6968 coefficients). Exactly the numbers of a naive LOO of `train_and_predict`
#   (real 0.543, real + curated 0.645), which took 24 s on one thread and ~3 min with scikit-learn's
#   default 2 OpenMP threads fighting another process for the cores (`single_threaded`).
# - stratified 10-fold: 2.5 s, real 0.541, real + curated 0.643; but it keeps only 63 % of the synthetic
#   rows per fold (LOO 96 %: a prompt shows 4 seed rows, any of ~10 held out drops it), and its verdict
#   depends on how rows fall into folds: Δ over 5 fold seeds had sd 0.009 at 96 rows but 0.041 at 48
#   (-0.083 to +0.028), more than the harm tolerance 0.03. LOO has no such randomness.
# - warm-starting each fold's fit from the previous fold's: 18 s instead of 26 in the same session,
#   but not the same model (real + curated 0.655 instead of 0.645: the solver stops at its tolerance
#   elsewhere); not used.
# So: leave-one-out where fold noise would decide verdicts (the ~50-row seeds most users have) while
# its work n * (n + m) stays under LOO_MAX_WORK (~15 s of one core here: 50 seed rows with up to 1150
# synthetic rows, 96 with up to 529; never above 244 seed rows); stratified 10-fold beyond, which
# costs about 10 / n of LOO and whose fold noise is small there.
LOO_MAX_WORK = 60_000
K_FOLDS = 10


@dataclass(frozen=True)
class SeedCVResult:
    """Out-of-fold macro-F1 over the seed rows, real only vs real + synthetic (None: not measured)."""

    method: str | None  # "leave-one-out" or "stratified 10-fold"; None when nothing was measured
    folds: int
    seed_rows: int
    synthetic_rows: int  # synthetic rows given
    unknown_lineage_rows: int = 0  # synthetic rows whose prompt is unknown: used in no fold
    real_macro_f1: float | None = None
    real_plus_synthetic_macro_f1: float | None = None
    delta_macro_f1: float | None = None  # (real + synthetic) - (real only)
    delta_macro_f1_ci: tuple[float, float] | None = None  # paired bootstrap over the seed rows
    real_macro_f1_ci: tuple[float, float] | None = None
    real_plus_synthetic_macro_f1_ci: tuple[float, float] | None = None
    kept_share: float | None = None  # mean over folds: synthetic rows trained on / rows with lineage
    seconds: float | None = None
    note: str | None = None  # why nothing was measured


def use_loo(seed_rows: int, synthetic_rows: int, max_work: int = LOO_MAX_WORK) -> bool:
    """Leave-one-out when its cost, about seed_rows * (seed_rows + synthetic_rows), is within `max_work`."""
    return seed_rows * (seed_rows + synthetic_rows) <= max_work


def cv_folds(labels: Sequence[str], seed: int, loo: bool, k: int = K_FOLDS) -> list[np.ndarray]:
    """Held-out row indices per fold: one row each (leave-one-out), or stratified k-fold (shuffled)."""
    n = len(labels)
    if loo or n <= k:
        return [np.array([i]) for i in range(n)]
    from sklearn.model_selection import KFold, StratifiedKFold

    largest = max(Counter(labels).values())
    # every label rarer than k: stratification is impossible (scikit-learn refuses), plain k-fold
    splitter = (StratifiedKFold if largest >= k else KFold)(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # a label with fewer than k rows: its rows spread over fewer folds, which is fine here
        warnings.simplefilter("ignore", UserWarning)
        return [test for _, test in splitter.split(np.zeros((n, 1)), list(labels))]


def seed_cross_validation(
    seed_ids: Sequence[str],
    seed_texts: Sequence[str],
    seed_labels: Sequence[str],
    synthetic_texts: Sequence[str],
    synthetic_labels: Sequence[str],
    synthetic_shown: Sequence[Collection[str] | None],
    *,
    seed: int,
    bootstrap_samples: int,
    loo_max_work: int = LOO_MAX_WORK,
    k: int = K_FOLDS,
) -> SeedCVResult:
    """Leakage-free cross-validated usefulness on the seed rows (method, rule and cost: module docstring).

    `synthetic_shown[j]`: the seed ids the prompt of synthetic row j showed (None: unknown, row unused)."""
    started = time.perf_counter()
    n, m = len(seed_texts), len(synthetic_texts)
    if not (len(seed_ids) == len(seed_labels) == n and len(synthetic_labels) == len(synthetic_shown) == m):
        raise ValueError("seed_ids/texts/labels and synthetic texts/labels/shown must have equal lengths")
    known = np.array([shown is not None for shown in synthetic_shown], dtype=bool)
    unknown = int((~known).sum())
    empty = SeedCVResult(None, 0, n, m, unknown)
    if n < 2 or len(set(seed_labels)) < 2:
        return _with(empty, note="needs at least 2 seed rows with 2 different labels", started=started)
    loo = use_loo(n, m, loo_max_work) or n <= k
    folds = cv_folds(seed_labels, seed, loo, k)
    method = "leave-one-out" if loo else f"stratified {k}-fold"

    from scipy import sparse
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.preprocessing import normalize

    try:
        counts = CountVectorizer(**TOKENIZER_OPTIONS).fit_transform([*seed_texts, *synthetic_texts])
    except ValueError as exc:  # "empty vocabulary": every text is blank or punctuation
        return _with(
            SeedCVResult(method, len(folds), n, m, unknown), note=f"cannot train: {exc}", started=started
        )
    tf = counts.astype(np.float64).tocsr()
    tf.data = 1.0 + np.log(tf.data)  # sublinear_tf, as in train_and_predict
    position = {seed_id: i for i, seed_id in enumerate(seed_ids)}
    # shows[j, i]: the prompt of synthetic row j showed seed row i (ids not in this seed are ignored)
    pairs = [
        (j, position[s]) for j, shown in enumerate(synthetic_shown) for s in shown or () if s in position
    ]
    shows = sparse.csr_matrix(
        (np.ones(len(pairs)), ([j for j, _ in pairs], [i for _, i in pairs])), shape=(m, n)
    )
    seed_y = np.asarray(seed_labels, dtype=object)
    synthetic_y = np.asarray(synthetic_labels, dtype=object)
    real_pred = np.empty(n, dtype=object)
    mixed_pred = np.empty(n, dtype=object)
    kept_shares: list[float] = []
    held_out = np.zeros(n, dtype=bool)

    def fit_predict(train_rows: np.ndarray, y: np.ndarray, test_rows: np.ndarray) -> np.ndarray:
        """The model `train_and_predict` would train on these rows' texts, predicting the test rows."""
        classes = set(y)
        if len(classes) == 1:  # as train_and_predict: one class only predicts it
            return np.array([next(iter(classes))] * len(test_rows), dtype=object)
        train = tf[train_rows]
        df = np.bincount(train.indices, minlength=tf.shape[1])
        # smooth IDF of the fold's training rows; 0 for n-grams they lack (outside their vocabulary)
        idf = np.where(df > 0, np.log((1.0 + len(train_rows)) / (1.0 + df)) + 1.0, 0.0)
        weights = sparse.diags(idf)
        test = tf[test_rows] @ weights
        test.eliminate_zeros()
        model = logistic_regression(seed).fit(normalize(train @ weights), y)
        return np.asarray(model.predict(normalize(test)), dtype=object)

    with single_threaded():
        for test in folds:
            held_out[:] = False
            held_out[test] = True
            train_seed = np.flatnonzero(~held_out)
            # the leakage rule: no synthetic row whose prompt showed a held-out row
            keep = known & (shows @ held_out.astype(np.float64) == 0)
            if known.any():
                kept_shares.append(float(keep.sum() / known.sum()))
            real_pred[test] = fit_predict(train_seed, seed_y[train_seed], test)
            kept = np.flatnonzero(keep)
            mixed_pred[test] = fit_predict(
                np.concatenate([train_seed, n + kept]),
                np.concatenate([seed_y[train_seed], synthetic_y[kept]]),
                test,
            )
    true, real_codes, classes = _encode(list(seed_labels), list(real_pred))
    _, mixed_codes, _ = _encode(list(seed_labels), list(mixed_pred))
    real_f1, mixed_f1 = (
        float(scores(true, real_codes, classes)[1][0]),
        float(scores(true, mixed_codes, classes)[1][0]),
    )
    real_ci = mixed_ci = delta_ci = None
    if bootstrap_samples:
        # one set of resamples of the seed rows for both arms: the CI of the difference is paired
        resamples = np.random.default_rng(seed).integers(0, n, size=(bootstrap_samples, n))
        real_boot = scores(true[resamples], real_codes[resamples], classes)[1]
        mixed_boot = scores(true[resamples], mixed_codes[resamples], classes)[1]
        real_ci, mixed_ci, delta_ci = (
            _interval(real_boot),
            _interval(mixed_boot),
            _interval(mixed_boot - real_boot),
        )
    return SeedCVResult(
        method,
        len(folds),
        n,
        m,
        unknown,
        real_macro_f1=real_f1,
        real_plus_synthetic_macro_f1=mixed_f1,
        delta_macro_f1=mixed_f1 - real_f1,
        delta_macro_f1_ci=delta_ci,
        real_macro_f1_ci=real_ci,
        real_plus_synthetic_macro_f1_ci=mixed_ci,
        kept_share=float(np.mean(kept_shares)) if kept_shares else None,
        seconds=time.perf_counter() - started,
    )


def _with(result: SeedCVResult, *, note: str, started: float) -> SeedCVResult:
    from dataclasses import replace

    return replace(result, note=note, seconds=time.perf_counter() - started)
