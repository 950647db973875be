"""The checks of ``trainkit doctor``, each a function returning a :class:`Check`.

They run on copies of the model the recipe builds and on the data module's own splits, so the
recipe's model is left untouched and every check starts from the same initial weights.
Thresholds are deliberately loose: a FAIL means the run cannot work as configured, a WARN
that it probably works worse than it could.
"""

from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainkit.callbacks.diagnostics import ActivationRecorder
from trainkit.nn.regularize import make_optimizer, penalty, set_dropout

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
DROPOUT_WARN, DROPOUT_FAIL = 0.1, 0.5  # one-batch cross-entropy with dropout alone, x ln(C)
FEWEST_FAIL, FEWEST_WARN = 5, 20  # training samples of the smallest class
PARAMS_PER_SAMPLE_WARN = 10_000  # parameters per training sample, from scratch


@dataclass
class Check:
    """One line of the doctor's report."""

    name: str
    status: str
    message: str
    values: dict[str, Any] = field(default_factory=dict)


def _finite(x: float) -> bool:
    return isinstance(x, float) and math.isfinite(x)


# -- model at init ---------------------------------------------------------------------------
def initial_loss(net: nn.Module, batches: list[tuple[Tensor, Tensor]], num_classes: int) -> Check:
    """Cross-entropy at init should be close to ln(C): the model starts with no preference.

    Measured with dropout off (batch norm still in train mode): dropout's rescaling of the
    survivors inflates the logits, which is the ``dropout`` check's business, not the init's.
    """
    net = copy.deepcopy(net).train()
    set_dropout(net, 0.0)
    with torch.no_grad():
        loss = float(np.mean([F.cross_entropy(net(x), y).item() for x, y in batches]))
    expected = math.log(num_classes)
    ratio = loss / expected
    values = {"loss": loss, "ln_C": expected, "ratio": ratio}
    if not _finite(loss) or not 0.5 <= ratio <= 2.0:
        return Check("initial_loss", FAIL, f"loss {loss:.3g} at init, expected ~ln({num_classes}) = {expected:.3g}: "
                     "the init makes confident (wrong) predictions, or labels/outputs do not match", values)
    if not 0.8 <= ratio <= 1.4:
        return Check("initial_loss", WARN, f"loss {loss:.3g} at init vs ln({num_classes}) = {expected:.3g}: logits start large; "
                     "consider a smaller init of the last layer (init.zero_init_last)", values)
    return Check("initial_loss", PASS, f"loss {loss:.3g} at init ~ ln({num_classes}) = {expected:.3g}", values)


def gradients_and_activations(net: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[dict[str, float], dict[str, dict[str, float]], dict[str, bool]]:
    """One forward/backward at init: weight-gradient norm per layer, activation statistics,
    and whether each layer's units are all identical (symmetry never broken)."""
    net = copy.deepcopy(net).train()
    x, y = batch
    with ActivationRecorder(net) as rec:
        F.cross_entropy(net(x), y).backward()
    grads, same = {}, {}
    for name, module in net.named_modules():
        w = getattr(module, "weight", None)
        if isinstance(w, Tensor) and w.ndim >= 2 and w.grad is not None:
            grads[name] = float(w.grad.norm())
            rows = w.detach().flatten(1)
            same[name] = rows.shape[0] > 1 and bool((rows == rows[:1]).all())
    return grads, rec.stats, same


def gradient_flow(grads: dict[str, float], same: dict[str, bool]) -> Check:
    """No layer with a zero, non-finite or exploding gradient; units not all identical."""
    values = {"grad_norm": grads}
    if not grads:
        return Check("gradient_flow", WARN, "no layer with a weight matrix to check", values)
    bad = [n for n, g in grads.items() if not math.isfinite(g)]
    if bad:
        return Check("gradient_flow", FAIL, f"non-finite gradient at init in {', '.join(bad)}", values)
    zero = [n for n, g in grads.items() if g == 0.0]
    symmetric = [n for n, s in same.items() if s]
    if zero or symmetric:
        parts = []
        if zero:
            parts.append(f"zero gradient in {len(zero)}/{len(grads)} layers ({', '.join(zero[:3])}{', ...' if len(zero) > 3 else ''})")
        if symmetric:
            parts.append(f"all units identical in {', '.join(symmetric[:3])}{', ...' if len(symmetric) > 3 else ''}: "
                         "symmetry is never broken (constant or zero init)")
        return Check("gradient_flow", FAIL, "; ".join(parts), values)
    lo, hi = min(grads.values()), max(grads.values())
    spread = lo / hi
    values["min_over_max"] = spread
    first, last = next(iter(grads)), list(grads)[-1]
    if spread < 1e-4 or hi > 1e4:
        kind = "exploding" if hi > 1e4 else "vanishing"
        return Check("gradient_flow", FAIL, f"{kind} gradients at init: layer norms from {lo:.2g} to {hi:.2g} "
                     f"({first} {grads[first]:.2g}, {last} {grads[last]:.2g}); check the init scheme and depth", values)
    if spread < 1e-2:
        return Check("gradient_flow", WARN, f"gradient norms span {1 / spread:.0f}x across layers ({lo:.2g} to {hi:.2g})", values)
    return Check("gradient_flow", PASS, f"every layer gets a gradient, norms {lo:.2g} to {hi:.2g}", values)


def activations(stats: dict[str, dict[str, float]]) -> Check:
    """Signal std through the depth, dead ReLU units, saturated tanh/sigmoid outputs."""
    if not stats:
        return Check("activations", WARN, "no activation modules to measure (functional activations are not hooked)")
    signal = [s["act_signal_std"] for s in stats.values()]
    dead = {n: s["dead"] for n, s in stats.items() if "dead" in s}
    sat = {n: s["saturated"] for n, s in stats.items() if "saturated" in s}
    values = {"signal_std": dict(zip(stats, signal)), "dead": dead, "saturated": sat}
    ratio = signal[-1] / signal[0] if signal[0] > 0 else 0.0
    values["last_over_first"] = ratio
    worst_dead = max(dead.values(), default=0.0)
    worst_sat = max(sat.values(), default=0.0)
    shape = f"signal std {signal[0]:.2g} at the first activation, {signal[-1]:.2g} at the last ({len(signal)} layers)"
    if signal[-1] < 1e-3 or ratio < 1e-2:
        return Check("activations", FAIL, f"{shape}: the signal vanishes through the depth (init too small for it)", values)
    if ratio > 1e2 or not math.isfinite(signal[-1]):
        return Check("activations", FAIL, f"{shape}: the signal explodes through the depth (init too large)", values)
    if worst_dead > 0.9 or worst_sat > 0.9:
        return Check("activations", FAIL, f"{shape}; up to {worst_dead:.0%} dead ReLU units, {worst_sat:.0%} saturated outputs", values)
    if worst_dead > 0.5 or worst_sat > 0.5 or not 0.1 <= ratio <= 10:
        return Check("activations", WARN, f"{shape}; up to {worst_dead:.0%} dead ReLU units, {worst_sat:.0%} saturated outputs", values)
    return Check("activations", PASS, f"{shape}; dead units <= {worst_dead:.0%}, saturated <= {worst_sat:.0%}", values)


def dropout_signal(net: nn.Module, batch: tuple[Tensor, Tensor], spec: dict[str, Any], lr: float, steps: int,
                   num_classes: int, off: list[float]) -> Check:
    """Dropout must not drown the signal: with dropout alone on (no decay, penalties or
    smoothing), the model must still fit one batch (its cross-entropy with dropout off, after
    the same steps as ``overfit_batch``, well below chance). ``off``: the losses of that
    batch's training with everything off."""
    rates = sorted({m.p for m in net.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0})
    if not rates:
        return Check("dropout", PASS, "no dropout")
    curve = train_steps(net, batch, {**spec, "weight_decay": 0.0}, lr, steps, {"l1": 0.0, "l2": 0.0}, 0.0)
    final, chance = curve.final_eval, math.log(num_classes)
    values = {"rates": rates, "cross_entropy": final, "chance": chance, "steps": len(curve)}
    shown = f"dropout {', '.join(f'{r:g}' for r in rates)}"
    if not (math.isfinite(final) and math.isfinite(curve[-1])):
        if not math.isfinite(off[-1]):
            return Check("dropout", WARN, f"{shown}: no verdict, the loss is not finite without it either (see overfit_batch)", values)
        return Check("dropout", FAIL, f"{shown}: with it alone the one-batch loss becomes non-finite at step "
                     f"{len(curve) - 1} (without it the batch fits): the noise drowns the signal; lower model.dropout", values)
    if final > DROPOUT_FAIL * chance:
        return Check("dropout", FAIL, f"{shown}: with it alone the model cannot fit one batch (cross-entropy "
                     f"{final:.3g} after {len(curve)} steps, chance {chance:.3g}): the noise drowns the signal; "
                     "lower model.dropout", values)
    if final > DROPOUT_WARN * chance:
        return Check("dropout", WARN, f"{shown}: one batch fits slowly with it (cross-entropy {final:.3g} after "
                     f"{len(curve)} steps, chance {chance:.3g}): strong noise", values)
    return Check("dropout", PASS, f"{shown}: one batch still fits with it (cross-entropy {final:.2g} after "
                 f"{len(curve)} steps)", values)


# -- short training on one batch ----------------------------------------------------------------
class Losses(list):
    """The training objective per step (a list), ``data``: its plain cross-entropy part, and
    ``final_eval``: the trained copy's cross-entropy in eval mode (dropout off)."""

    data: list[float]
    final_eval: float


def train_steps(net: nn.Module, batch: tuple[Tensor, Tensor], spec: dict[str, Any], lr: float, steps: int,
                regularization: dict[str, Any] | None, label_smoothing: float, stop_below: float = 0.0) -> Losses:
    """Train a copy of ``net`` on one batch for ``steps`` (or until the loss is below
    ``stop_below``); returns the training objective per step, and its cross-entropy as ``.data``.

    ``regularization=None`` means all off: no weight decay, penalties, dropout or smoothing.
    With it on, the reported objective includes the optimizer's weight decay as the L2 term
    ``wd / 2 * ||w||^2`` it stands for (SGD's decay is exactly that term's gradient), so the
    objectives of both runs compare.
    """
    net = copy.deepcopy(net).train()
    spec = {**spec, "lr": lr}
    if regularization is None:
        spec = {**spec, "weight_decay": 0.0}
        set_dropout(net, 0.0)
        reg = {"l1": 0.0, "l2": 0.0}
    else:
        reg = regularization
    optimizer = make_optimizer(net, spec, regularization)
    x, y = batch
    losses = Losses()
    losses.data = []
    for _ in range(steps):
        optimizer.zero_grad()
        logits = net(x)
        losses.data.append(float(F.cross_entropy(logits.detach(), y)))
        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing if regularization is not None else 0.0)
        if reg.get("l1") or reg.get("l2"):
            loss = loss + penalty(net, reg["l1"], reg["l2"], reg.get("no_decay_bias_norm", True))
        wd = float(spec.get("weight_decay") or 0.0)
        shown = loss.detach() + (penalty(net, 0.0, wd, reg.get("no_decay_bias_norm", True)).detach() if wd else 0.0)
        losses.append(float(shown))
        if not math.isfinite(losses[-1]) or losses[-1] < stop_below:
            break
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        losses.final_eval = float(F.cross_entropy(net.eval()(x), y))
    return losses


def overfit_target(num_classes: int) -> float:
    """"Near-zero" for the one-batch overfit: 5% of the loss of a uniform guess."""
    return 0.05 * math.log(num_classes)


def overfit(losses: list[float], num_classes: int, lr: float) -> Check:
    """With regularization off, one small batch must be fit to near-zero loss."""
    target = overfit_target(num_classes)
    final = min(losses[-5:]) if losses else float("nan")
    values = {"first": losses[0] if losses else None, "final": final, "steps": len(losses), "target": target}
    if not math.isfinite(losses[-1]):
        return Check("overfit_batch", FAIL, f"the loss became non-finite at step {len(losses) - 1} with lr {lr:.3g}: "
                     "the lr is far too high (see lr_range)", values)
    if final <= target:
        return Check("overfit_batch", PASS, f"one batch fit from loss {losses[0]:.3g} to {final:.2g} in {len(losses)} steps", values)
    if final < 0.5 * losses[0]:
        return Check("overfit_batch", WARN, f"loss fell from {losses[0]:.3g} to {final:.3g} in {len(losses)} steps, not to "
                     f"~0 (< {target:.2g}): slow to learn (lr, init or capacity)", values)
    return Check("overfit_batch", FAIL, f"cannot fit one batch: loss {losses[0]:.3g} -> {final:.3g} in {len(losses)} steps "
                 "(a dead network, a wrong lr, or a loss/label bug)", values)


def regularization_wired(on: Losses | list[float], off: Losses | list[float], configured: list[str],
                         num_classes: int = 10) -> Check:
    """The recipe's regularization must raise the training loss over the same steps without it,
    and must not keep the model from fitting one batch at all (its cross-entropy stuck above
    half its start while the model without it fits the batch)."""
    if not configured:
        return Check("regularization", PASS, "the recipe uses no regularization; nothing to compare")
    tail_on, tail_off = float(np.mean(on[-10:])), float(np.mean(off[-10:]))
    values = {"loss_on": tail_on, "loss_off": tail_off, "configured": configured}
    if not math.isfinite(tail_off):
        return Check("regularization", WARN, "no comparison: the loss without it is not finite (see overfit_batch)", values)
    if not math.isfinite(tail_on):
        return Check("regularization", FAIL, f"{', '.join(configured)}: with it the one-batch loss becomes non-finite, "
                     f"without it it falls to {tail_off:.3g}", values)
    data_on, data_off = getattr(on, "data", None), getattr(off, "data", None)
    if data_on and data_off:
        start, end_on, end_off = data_on[0], float(np.mean(data_on[-10:])), min(data_off[-5:])
        values.update({"cross_entropy_on": end_on, "cross_entropy_off": end_off, "cross_entropy_start": start})
        if end_on > 0.5 * start and end_off <= overfit_target(num_classes):
            return Check("regularization", FAIL, f"{', '.join(configured)} prevent(s) fitting even one batch: its "
                         f"cross-entropy stays at {end_on:.3g} (from {start:.3g}; chance {math.log(num_classes):.3g}), "
                         f"without it {end_off:.2g}: too strong to learn anything", values)
    if tail_on > tail_off:
        return Check("regularization", PASS, f"{', '.join(configured)} raise(s) the training loss: {tail_on:.3g} on vs {tail_off:.3g} off", values)
    return Check("regularization", WARN, f"{', '.join(configured)} do(es) not raise the training loss ({tail_on:.3g} on vs "
                 f"{tail_off:.3g} off): too weak to matter, or not wired in", values)


# -- data ----------------------------------------------------------------------------------------
def _raw_inputs(dataset: Any) -> np.ndarray:
    """The un-augmented inputs of a split (TensorDataset or trainkit's AugmentedImages)."""
    if hasattr(dataset, "tensors"):
        return dataset.tensors[0].numpy()
    if hasattr(dataset, "raw_inputs"):  # a file source's split: a bounded sample, decoded
        return dataset.raw_inputs()
    return np.asarray(dataset.x)


def _labels(dataset: Any) -> np.ndarray:
    return dataset.tensors[1].numpy() if hasattr(dataset, "tensors") else np.asarray(dataset.y)


def label_balance(splits: dict[str, Any], num_classes: int) -> Check:
    """Every class in the training split; the splits share one class distribution."""
    shares = {s: np.bincount(_labels(d), minlength=num_classes) / max(len(d), 1) for s, d in splits.items() if len(d)}
    values = {s: [round(float(v), 4) for v in p] for s, p in shares.items()}
    train = shares["train"]
    missing = [c for c in range(num_classes) if train[c] == 0]
    if missing:
        return Check("label_balance", FAIL, f"classes {missing} have no training samples", values)
    tv = {s: 0.5 * float(np.abs(p - train).sum()) for s, p in shares.items() if s != "train"}
    imbalance = float(train.max() / train.min())
    msg = f"train class shares {train.min():.3f} to {train.max():.3f}; " + ", ".join(f"{s} differs by {v:.3f}" for s, v in tv.items())
    if imbalance > 10 or max(tv.values(), default=0) > 0.1:
        return Check("label_balance", WARN, msg + " (imbalanced: consider class weights or a balanced sampler)", values)
    return Check("label_balance", PASS, msg, values)


def splits_disjoint(splits: dict[str, Any]) -> Check:
    """No sample (identical inputs) both in training and in val/test."""
    digest = {s: {hashlib.sha1(np.ascontiguousarray(r).tobytes()).hexdigest() for r in _raw_inputs(d)} for s, d in splits.items()}
    shared = {s: len(digest[s] & digest["train"]) for s in digest if s != "train"}
    values = {f"{s}_in_train": n for s, n in shared.items()}
    sizes = {s: max(len(digest[s]), 1) for s in shared}
    worst = max((n / sizes[s] for s, n in shared.items()), default=0.0)
    msg = ", ".join(f"{n} of {s}'s {sizes[s]} inputs also in train" for s, n in shared.items())
    if worst > 0.05:
        return Check("splits_disjoint", FAIL, msg + ": the held-out splits leak training data", values)
    if worst > 0.01:
        return Check("splits_disjoint", WARN, msg + " (duplicates in the dataset)", values)
    return Check("splits_disjoint", PASS, msg or "one split only", values)


def inputs_standardized(batches: list[tuple[Tensor, Tensor]]) -> Check:
    """Training inputs after all transforms should have mean ~0 and std ~1."""
    x = torch.cat([b[0] for b in batches]).float()
    mean, std = float(x.mean()), float(x.std())
    values = {"mean": mean, "std": std}
    if abs(mean) < 0.25 and 0.5 < std < 2.0:
        return Check("inputs_standardized", PASS, f"training inputs mean {mean:.3f}, std {std:.3f}", values)
    return Check("inputs_standardized", WARN, f"training inputs mean {mean:.3g}, std {std:.3g} (want ~0 and ~1): "
                 "unstandardized inputs slow or stall training (data.standardize)", values)


def shuffling(loader: Any) -> Check:
    """The training loader's sampler must not visit samples in order."""
    sampler = getattr(loader, "sampler", None)
    order = list(iter(sampler))[:256] if sampler is not None else []
    if len(order) > 1 and order != sorted(order):
        return Check("shuffling", PASS, f"training order is shuffled ({type(sampler).__name__})")
    return Check("shuffling", FAIL, "the training loader visits samples in a fixed sorted order: turn shuffling on")


def label_signal(splits: dict[str, Any], seed: int = 0, limit: int = 2000) -> Check:
    """Labels must be predictable from the inputs: a quick k-NN / logistic probe beats chance on val."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    if not len(splits.get("val", ())):
        return Check("label_signal", WARN, "no validation split to probe (data.val_fraction: 0)")
    rng = np.random.default_rng(seed)

    def sample(s: str) -> tuple[np.ndarray, np.ndarray]:
        x, y = _raw_inputs(splits[s]), _labels(splits[s])
        idx = rng.permutation(len(y))[:limit]
        return x[idx].reshape(len(idx), -1), y[idx]

    (xt, yt), (xv, yv) = sample("train"), sample("val")
    mu, sd = xt.mean(0), xt.std(0) + 1e-8  # the probe standardizes for itself
    xt, xv = (xt - mu) / sd, (xv - mu) / sd
    scores = {
        "knn": float(KNeighborsClassifier(5).fit(xt, yt).score(xv, yv)),
        "logistic": float(LogisticRegression(max_iter=300).fit(xt, yt).score(xv, yv)),
    }
    chance = float(np.bincount(yv).max() / len(yv))
    margin = 3 * math.sqrt(chance * (1 - chance) / len(yv))
    best = max(scores.values())
    values = {**scores, "chance": chance, "margin": margin}
    if best <= chance + margin:
        return Check("label_signal", FAIL, f"labels look unrelated to inputs: k-NN {scores['knn']:.2f} and logistic "
                     f"{scores['logistic']:.2f} val accuracy vs chance {chance:.2f} (shuffled or misaligned labels?)", values)
    return Check("label_signal", PASS, f"a probe predicts val labels: k-NN {scores['knn']:.2f}, logistic {scores['logistic']:.2f} vs chance {chance:.2f}", values)


def data_size(splits: dict[str, Any], num_classes: int, params: int, warm_start: bool = False) -> Check:
    """Enough training data for the task and the model: samples per class, and samples against
    the number of parameters (a model trained from scratch; a warm start needs less data)."""
    counts = np.bincount(_labels(splits["train"]), minlength=num_classes)
    n, fewest = int(counts.sum()), int(counts.min())
    ratio = params / max(n, 1)
    values = {"train_samples": n, "fewest_per_class": fewest, "parameters": params, "parameters_per_sample": ratio}
    msg = (f"{n} training samples ({fewest} in the smallest class) for {params:,} parameters "
           f"({ratio:,.0f} per sample)")
    if fewest < FEWEST_FAIL:
        return Check("data_size", FAIL, f"{msg}: fewer than {FEWEST_FAIL} examples of a class cannot teach (or "
                     "measure) it; more data, or fewer/merged classes", values)
    if fewest < FEWEST_WARN or (ratio > PARAMS_PER_SAMPLE_WARN and not warm_start):
        return Check("data_size", WARN, f"{msg}: little data for this model; expect over-fitting (more data, "
                     "augmentation, a smaller model or a warm start)", values)
    return Check("data_size", PASS, msg, values)


def cycle(loader: Any) -> Iterator[tuple[Tensor, Tensor]]:
    while True:
        for x, y, *_ in loader:
            yield x, y
