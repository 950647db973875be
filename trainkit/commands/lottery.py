"""``trainkit lottery --config R.yaml [overrides]``: the lottery-ticket procedure
(Frankle & Carbin 2019; rewinding: Frankle et al. 2020).

The recipe's ``model.prune`` gives the final ``sparsity``, the ``scope`` (global or layer), the
number of ``rounds`` and the ``rewind_epoch``. Round 0 trains the dense model (run
``<name>-dense``). Each round ``r`` then prunes the smallest surviving weights of the previous
round's trained model (to ``1 - (1 - sparsity)^(r/rounds)``), rewinds the survivors to their
values at the start of ``rewind_epoch`` of the dense run (0: the initial weights), and retrains
with the mask fixed (run ``<name>-round<r>``, started from ``model.init: {scheme: checkpoint}``
with the ticket). Sparsity and validation metrics per round go to ``<dense run>/lottery.json``
and into each round's metrics.json.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Sequence

import torch

from trainkit.errors import ConfigError


def _net_state(ckpt: Path) -> dict[str, torch.Tensor]:
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    return {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}


def lottery(argv: Sequence[str]) -> list[dict[str, Any]]:
    """Run the procedure for a recipe (``argv`` as after ``trainkit lottery``); returns one row per round.

    Raises:
        ConfigError: the recipe has no ``model.prune``.
    """
    from trainkit.nn.prune import attach_masks, prune_to, pruned_state, sparsity
    from trainkit.runner import TrainkitCLI, run

    argv = list(argv)
    plan = TrainkitCLI(["fit", *argv], run_stage=False)  # parse and build only: nothing is written
    spec = plan.model.prune_spec
    if spec is None:
        raise ConfigError("trainkit lottery needs model.prune: {sparsity: 0.8, rounds: 1, rewind_epoch: 0, scope: global}",
                          "model.prune")
    base, net = plan.run_dir.path.name, plan.model.net
    rewind = copy.deepcopy(net)  # epoch 0: the initial weights of the dense run (same seed)
    dense = ["fit", *argv, "--model.prune=null"]
    if spec["rewind_epoch"] > 0:
        # train up to the rewind point, keep those weights, then continue the same run (exact resume)
        early = run([*dense, f"--run.name={base}-dense", f"--trainer.max_epochs={spec['rewind_epoch']}"])
        rewind.load_state_dict(_net_state(early.run_dir / "checkpoints" / "last.ckpt"))
    result = run([*dense, f"--run.name={base}-dense"])
    dense_dir = result.run_dir
    rows = [{"round": 0, "sparsity": 0.0, "run_dir": str(dense_dir), **result.metrics}]
    trained_ckpt = dense_dir / "checkpoints" / "last.ckpt"
    for r in range(1, spec["rounds"] + 1):
        trained = copy.deepcopy(net)
        state = _net_state(trained_ckpt)
        attach_masks(trained, state)
        trained.load_state_dict(state)
        target = 1.0 - (1.0 - spec["sparsity"]) ** (r / spec["rounds"])
        reached = prune_to(trained, target, spec["scope"])
        ticket = dense_dir / f"ticket-round{r}.pt"
        torch.save(pruned_state(copy.deepcopy(rewind), masks_from=trained), ticket)
        result = run([
            "fit", *argv, f"--run.name={base}-round{r}",
            f"--model.init={{scheme: checkpoint, path: {ticket.resolve()}}}",
            f"--model.prune={{sparsity: {spec['sparsity']}, scope: {spec['scope']}, epochs: []}}",
        ])
        trained_ckpt = result.run_dir / "checkpoints" / "last.ckpt"
        check = copy.deepcopy(net)
        final = _net_state(trained_ckpt)
        attach_masks(check, final)
        check.load_state_dict(final)
        rows.append({"round": r, "sparsity": sparsity(check), "target_sparsity": reached,
                     "run_dir": str(result.run_dir), **result.metrics})
        from trainkit.rundir import RunDir

        RunDir(result.run_dir).write_metrics({"lottery/round": r, "lottery/sparsity": rows[-1]["sparsity"]})
    (dense_dir / "lottery.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def main(argv: Sequence[str]) -> int:
    """``trainkit lottery``: run the rounds, print sparsity and metrics per round."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    rows = lottery(argv)
    if rank_zero_only.rank == 0:
        keys = [k for k in ("val/acc", "val/loss", "val/f1") if k in rows[0]]
        print("round  sparsity  " + "  ".join(f"{k:>8}" for k in keys))
        for row in rows:
            print(f"{row['round']:>5}  {row['sparsity']:>8.4f}  " + "  ".join(f"{row.get(k, float('nan')):>8.4f}" for k in keys))
        print(f"lottery: {Path(rows[0]['run_dir']) / 'lottery.json'}")
        print(f"run dir: {rows[-1]['run_dir']}")
    return 0
