"""Label-free model selection: score each epoch's model without target labels.

Target labels, when known, are used only for reporting, never here. The scores come
from pytorch-adapt's validators (Musgrave et al., "Benchmarking Validation Methods for
Unsupervised Domain Adaptation", 2022):

* ``im`` — information maximisation, H(E p) − E H(p) on target predictions: high when
  predictions are confident *and* diverse. A model that collapses onto one class
  scores ~0, which is why it is the default.
* ``snd`` — soft neighbourhood density (Saito et al. 2021) of target predictions: high
  when target points cluster. It can reward a collapsed model, so it is reported but
  not the default.
* ``dev`` — deep embedded validation (You et al., ICML 2019, "Towards Accurate Model
  Selection in Deep Unsupervised Domain Adaptation"): the source-validation loss
  importance-weighted towards the target, w(x) = p_t(x)/p_s(x) estimated by a domain
  classifier on the model's features, with a control variate (:func:`dev_risk`). Needs
  labelled source images; the score is −risk.
* ``source_val`` — accuracy on the labelled source validation split (a supervised but
  source-only criterion: it protects source accuracy, not target accuracy).
* ``mixval`` — MixVal (Hu et al., NeurIPS 2023): the model's consistency with its own
  pseudo-labels on mixup-mixed target images (:mod:`adapt.mixval`); one extra forward
  pass over the target a epoch, so it is computed only when it selects or when the recipe
  compares selectors (``method.compare_selectors``, as DEV and COT).
* ``atc`` / ``doc`` / ``cot`` — the estimated target accuracy by ATC (Garg et al., ICLR
  2022) / DoC (Guillory et al., ICCV 2021) / COT (Lu et al., NeurIPS 2023), from the
  source-validation and target predictions already computed
  (:mod:`adapt.accuracy_estimation`); ATC and DoC are logged whenever labelled
  source validation images exist (numpy on cached predictions: no extra forward pass),
  COT (an exact transport problem) only when it selects.
* ``last`` — no selection: the final epoch.

Which selector deploys the better model is measured, not assumed:
``benchmarks/labelfree_study.py`` reports each one's regret (oracle − picked accuracy).

Every epoch logs the scores that its passes give for free (IM, SND, source-validation
accuracy, ATC, DoC) and the selecting one; ``method.compare_selectors: true`` adds DEV,
MixVal and COT every epoch (the studies compare them). ``selection.json`` keeps each
selector's pick (:func:`selector_picks`), so a reader sees where they disagree.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from adapt.errors import UserError
from adapt.evaluate import classification_metrics, predict
from adapt.methods.adabn import adabn_predict, batchnorm_layers
from adapt.mixval import mixval_score
from adapt.selectors import SELECTOR_KEYS, SELECTORS
from adapt.accuracy_estimation import estimate_atc, estimate_cot, estimate_doc

#: cap per domain on the images whose features train DEV's domain classifier (cost bound)
DEV_MAX_IMAGES = 1000


def dev_importance_weights(source_train_feats: np.ndarray, target_feats: np.ndarray, source_val_feats: np.ndarray,
                           seed: int = 0) -> np.ndarray:
    """DEV's density ratio w(x) = p_t(x) / p_s(x) at the source-validation features [n_val].

    A domain classifier (standardised logistic regression; You et al. use an MLP, as does
    pytorch-adapt's ``DeepEmbeddedValidator``, whose nine weight decays and early stopping
    make the estimate depend on the run: a linear one is deterministic and enough on pooled
    features) separates source-train (label 1) from target (label 0) features; then
    w(x) = P(target | x) / P(source | x) · n_s / n_t (Bayes' rule with the class priors
    undone, as in the authors' code).
    """
    # late: scikit-learn's import costs ~1 s of start-up and only DEV needs it here
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([source_train_feats, target_feats]).astype(np.float64)
    y = np.r_[np.ones(len(source_train_feats)), np.zeros(len(target_feats))]
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000, random_state=seed))
    clf.fit(x, y)
    p = clf.predict_proba(np.asarray(source_val_feats, dtype=np.float64))  # columns: [target, source]
    p = np.clip(p, 1e-6, 1.0)
    return p[:, 0] / p[:, 1] * (len(source_train_feats) / len(target_feats))


def dev_risk(weights: np.ndarray, errors: np.ndarray) -> float:
    """DEV's target-risk estimate from importance weights w [n] and per-sample source-
    validation losses ℓ [n] (You et al. 2019, Eq. 9; pytorch-adapt's ``get_dev_risk``):

        η = −Cov(w ℓ, w) / Var(w),   R_DEV = mean(w ℓ) + η · mean(w) − η

    (the control variate η(w − 1) has mean 0 and cancels much of the weighting's variance).
    With constant weights (Var(w) = 0: the domains are indistinguishable to the classifier)
    there is nothing to control and R_DEV = mean(w ℓ).
    """
    get_dev_risk = _validators()[2]
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    e = np.asarray(errors, dtype=np.float64).reshape(-1)
    if len(w) < 2 or np.var(w) <= 1e-12 * max(np.mean(w) ** 2, 1e-300):
        return float(np.mean(w * e))
    return float(get_dev_risk(torch.from_numpy(w).view(-1, 1), torch.from_numpy(e).view(-1, 1), None))


def _features_subset(model: nn.Module, data: Dataset, device: torch.device, batch_size: int,
                     limit: int | None, seed: int) -> dict[str, np.ndarray]:
    if limit is not None and len(data) > limit:
        idx = np.sort(np.random.default_rng([seed, 0xDE5]).choice(len(data), limit, replace=False))
        data = Subset(data, idx.tolist())
    return predict(model, data, device, batch_size, return_features=True)


def _validators() -> tuple[type, type, Callable]:
    """pytorch-adapt's IM and SND validators and DEV's risk estimate.

    Late import: pytorch-adapt (with torchmetrics behind it) adds seconds to start-up and
    only selection needs it. torchmetrics' import of ``pkg_resources`` warns on every run
    (a deprecation aimed at torchmetrics' authors, not at our users): that one warning,
    from that module, is silenced here — the only place it is triggered.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning,
                                module=r"torchmetrics\.")
        # late: pytorch_adapt's import takes seconds; only these selectors need it
        from pytorch_adapt.validators import IMValidator, SNDValidator
        from pytorch_adapt.validators.deep_embedded_validator import get_dev_risk
    return IMValidator, SNDValidator, get_dev_risk


def label_free_scores(probs: np.ndarray) -> dict[str, float]:
    """IM and SND of target predicted probabilities ``probs`` [N, K] (higher is better)."""
    IMValidator, SNDValidator, _ = _validators()
    p = torch.as_tensor(probs, dtype=torch.float32).clamp_min(1e-12)
    logits = p.log()  # softmax(log p) = p, so IM sees exactly these predictions
    return {
        "im": float(IMValidator()(target_train={"logits": logits})),
        "snd": float(SNDValidator()(target_train={"preds": p})),
    }


def make_score_fn(
    selector: str,
    *,
    target: Dataset,
    source_val: Dataset | None,
    class_names: list[str],
    device: torch.device,
    prepare: Callable[[nn.Module], nn.Module] | None = None,
    source_prepare: Callable[[nn.Module], nn.Module] | None = None,
    oracle: Dataset | None = None,
    batch_size: int = 256,
    source_train: Dataset | None = None,
    seed: int = 0,
    few_labels: Dataset | None = None,
    target_adabn: bool = False,
    compare: bool = False,
) -> Callable[[nn.Module], tuple[float, dict[str, float]]]:
    """A score function for :func:`adapt.train.fit` that logs every score and returns
    the one ``selector`` names. ``prepare`` turns the training model into the model that
    will be deployed (e.g. AdaBN on the target) before it is scored; it gets a copy.
    ``source_prepare`` does the same for the source-validation accuracy when the model
    is deployed on the source differently (per-domain BatchNorm statistics: AdaBN and
    fine-tuning runs are measured on the source with the source's statistics).

    Every score that the data allows is logged each epoch, whichever one selects: DEV
    when ``source_train`` and ``source_val`` are given (labelled source images), the
    source-validation accuracy when ``source_val`` is. A selector whose data is missing
    (``dev`` or ``source_val`` on a source-free run) is refused here, up front.

    ``oracle``: labelled target images (the target test split) whose accuracy is logged
    per epoch as ``oracle_target_accuracy`` — for reporting the selection regret only;
    it never enters the score.

    ``target_adabn``: the model is deployed with AdaBN statistics of ``target`` (in place of
    a ``prepare`` that does that): the copy's statistics and its target predictions come
    from one pass (:func:`adapt.methods.adabn.adabn_predict`).

    ``compare``: also compute, every epoch, the selectors that cost a pass or a fit of their
    own beyond the selecting one (DEV: the source training images' features and a domain
    classifier; MixVal: a mixup pass; COT: a transport problem) — the recipe's
    ``method.compare_selectors``. Off, only the selecting one of them is computed; IM, SND,
    the source-validation accuracy, ATC and DoC come from passes made anyway and are
    always logged.

    ``few_labels``: the k labelled target images per class (``data.target.labeled_per_class``);
    their accuracy is logged as ``few_labels_accuracy`` and selects with ``few_labels`` — not
    label-free, and biased upwards for runs that train on the same images (docs/fewlabels.md)."""
    if selector not in SELECTORS:
        raise ValueError(f"unknown selector {selector!r}; choose from {SELECTORS}")
    has_val = source_val is not None and len(source_val) > 0
    has_dev = has_val and source_train is not None and len(source_train) > 0
    if selector in ("source_val", "atc", "doc", "cot") and not has_val:
        raise UserError(f"method.selection: {selector!r} needs labelled source validation images (this run has none)")
    if selector == "few_labels" and (few_labels is None or len(few_labels) == 0):
        raise UserError("method.selection: 'few_labels' needs data.target.labeled_per_class (this run has none)")
    if selector == "dev" and not has_dev:
        raise UserError("method.selection: 'dev' needs labelled source images (source train and validation); "
                        "this run has none — use im or snd")

    with_dev = has_dev and (selector == "dev" or compare)
    kept = TargetStatisticsKept()

    def score(model: nn.Module) -> tuple[float | None, dict[str, float]]:
        value, logs, candidate = _score(model)
        if target_adabn:
            kept.offer(candidate, value)
        return value, logs

    def _score(model: nn.Module) -> tuple[float | None, dict[str, float], nn.Module]:
        if target_adabn:
            candidate = copy.deepcopy(model)
            t_out = adabn_predict(candidate, target, device, batch_size, return_features=with_dev)
        else:
            candidate = prepare(copy.deepcopy(model)) if prepare is not None else model
            t_out = predict(candidate, target, device, batch_size, return_features=with_dev)
        logs = label_free_scores(t_out["probs"])
        if has_val:
            on_source = source_prepare(copy.deepcopy(model)) if source_prepare is not None else candidate
            out = predict(on_source, source_val, device, batch_size, return_features=with_dev)
            m = classification_metrics(out["labels"], out["probs"].argmax(1), class_names)
            logs["source_val_accuracy"] = m["accuracy"] if m["accuracy"] is not None else float("nan")
            if len(out["labels"]) and len(t_out["probs"]):
                logs["atc"] = estimate_atc(out["probs"], out["labels"], t_out["probs"])
                logs["doc"] = estimate_doc(out["probs"], out["labels"], t_out["probs"])
                if selector == "cot" or compare:  # an exact transport problem per epoch
                    logs["cot"] = estimate_cot(t_out["probs"], out["labels"], seed=seed)
            if with_dev:
                logs["dev"] = _dev_score(on_source, t_out, out)
        if selector == "mixval" or compare:
            logs["mixval"] = mixval_score(candidate, target, device, batch_size, seed=seed)
        if few_labels is not None and len(few_labels):
            logs["few_labels_accuracy"] = _accuracy(candidate, few_labels)
        if oracle is not None and len(oracle):
            logs["oracle_target_accuracy"] = _accuracy(candidate, oracle)
        if selector == "last":
            return None, logs, candidate  # no selection: the loop takes the last epoch
        return logs[SELECTOR_KEYS[selector]], logs, candidate

    def _accuracy(candidate: nn.Module, data: Dataset) -> float:
        out = predict(candidate, data, device, batch_size)
        acc = classification_metrics(out["labels"], out["probs"].argmax(1), class_names)["accuracy"]
        return acc if acc is not None else float("nan")

    def _dev_score(on_source: nn.Module, t_out: dict[str, np.ndarray], val_out: dict[str, np.ndarray]) -> float:
        """−R_DEV: the source-validation cross-entropy weighted towards the target."""
        s_feats = _features_subset(on_source, source_train, device, batch_size, DEV_MAX_IMAGES, seed)["features"]
        t_feats = t_out["features"]
        if len(t_feats) > DEV_MAX_IMAGES:
            t_feats = t_feats[np.random.default_rng([seed, 0xDE6]).choice(len(t_feats), DEV_MAX_IMAGES, replace=False)]
        w = dev_importance_weights(s_feats, t_feats, val_out["features"], seed)
        p_true = val_out["probs"][np.arange(len(val_out["labels"])), val_out["labels"]]
        return -dev_risk(w, -np.log(np.clip(p_true, 1e-12, None)))

    return EpochScore(score, kept)


class TargetStatisticsKept:
    """The target-statistics copy (``target_adabn``) of the model state that scored best so
    far — the state :func:`adapt.train.fit` keeps and ends with (first best on ties; the
    latest with no score, as ``selection: last`` takes the last epoch) — so that the final
    model is deployed on the target without estimating the same statistics again."""

    def __init__(self) -> None:
        self.model: nn.Module | None = None
        self.score: float | None = None

    def offer(self, candidate: nn.Module, score: float | None) -> None:
        if self.model is None or score is None or (self.score is not None and score > self.score):
            self.model, self.score = candidate, score

    def statistics_for(self, model: nn.Module) -> nn.Module | None:
        """The kept copy when ``model`` holds exactly its weights (every parameter, and
        every buffer but the BatchNorm statistics AdaBN sets), else None."""
        if self.model is None:
            return None
        ours, theirs = _weights_without_statistics(model), _weights_without_statistics(self.model)
        same = len(ours) == len(theirs) and all(
            a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b.to(a.device)) for a, b in zip(ours, theirs))
        return self.model if same else None


def _weights_without_statistics(model: nn.Module) -> list[torch.Tensor]:
    """Every parameter and buffer of ``model`` but the BatchNorm statistics AdaBN sets."""
    stats = {id(b) for layer in batchnorm_layers(model) for b in (layer.running_mean, layer.running_var)}
    return [t for t in (*model.parameters(), *model.buffers()) if id(t) not in stats]


class EpochScore:
    """What :func:`make_score_fn` returns: called with the model each epoch, it returns
    (score or None, logs); :meth:`deployed_on_target` hands over the target statistics it
    has already estimated for a model state (``target_adabn``)."""

    def __init__(self, score: Callable[[nn.Module], tuple[float | None, dict[str, float]]],
                 kept: TargetStatisticsKept) -> None:
        self._score, self._kept = score, kept

    def __call__(self, model: nn.Module) -> tuple[float | None, dict[str, float]]:
        return self._score(model)

    def deployed_on_target(self, model: nn.Module) -> bool:
        """Give ``model`` the target BatchNorm statistics estimated when its exact weights
        were scored (bit for bit what AdaBN on the same target images gives: same images,
        same batches); False when they were not (another state, a resumed run)."""
        kept = self._kept.statistics_for(model)
        if kept is None:
            return False
        with torch.no_grad():
            for ours, theirs in zip(batchnorm_layers(model), batchnorm_layers(kept)):
                ours.running_mean.copy_(theirs.running_mean)
                ours.running_var.copy_(theirs.running_var)
        return True


def selector_picks(epochs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The epoch each selector would pick from per-epoch logs (first best on ties, as the
    loop keeps the first improvement); selectors without finite scores are left out.
    Returns ``{selector: {"epoch": e, "score": s}}``."""
    picks: dict[str, dict[str, Any]] = {}
    for selector, key in SELECTOR_KEYS.items():
        scored = [(float(e[key]), e["epoch"]) for e in epochs
                  if key in e and e[key] is not None and np.isfinite(float(e[key]))]
        if scored:
            best = max(scored, key=lambda t: t[0])  # max keeps the first of equal scores
            picks[selector] = {"epoch": best[1], "score": best[0]}
    return picks


def selection_summary(history: list[dict[str, Any]], selector: str, best_epoch: int) -> dict[str, Any]:
    """The chosen epoch, every epoch's scores and every selector's pick, for ``selection.json``.

    ``picks`` maps each selector with scores to the epoch it would have chosen;
    ``selectors_agree`` says whether all picked the same epoch (``last`` aside, which
    always picks the final one)."""
    keys = ("im", "snd", "dev", "source_val_accuracy", "mixval", "atc", "doc", "cot", "few_labels_accuracy",
            "oracle_target_accuracy", "score")
    epochs = [{"epoch": h["epoch"], **{k: h[k] for k in keys if k in h}} for h in history]
    picks = selector_picks(epochs)
    chosen = {p["epoch"] for name, p in picks.items() if name != "last"}
    return {
        "selector": selector,
        "selected_epoch": best_epoch,
        "picks": picks,
        "selectors_agree": len(chosen) <= 1,
        "epochs": epochs,
    }
