"""The NaN guard: a planted non-finite step never reaches the weights or a checkpoint, the run
stops at the next host check, and the message names the step, the lr and the layer truthfully."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import DEFAULT_RECIPE, QUIET

from trainkit.cli import main

FAST = ["--data.num_workers=0", "--trainer.logger=false", *QUIET]


def planted(*pairs: tuple[str, dict]) -> list[str]:
    return [f"--trainer.callbacks+={json.dumps({'class_path': c, 'init_args': a})}" for c, a in pairs]


def error(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_planted_nan_stops_before_the_next_checkpoint_and_every_checkpoint_stays_finite(capsys):
    # the recipe's defaults (W&B offline, 2 workers); batch norm: the bad batch's forward poisons
    # its running statistics, so a checkpoint written after step 7 would hold NaN
    code = main(["fit", "--config", str(DEFAULT_RECIPE), "--model.norm=batch", "--checkpoint.every_n_steps=3",
                 "--trainer.max_epochs=1", "--run.name=planted", *planted(("planted.NaNAt", {"step": 7}))])
    message = error(capsys)
    assert code == 1, message
    assert message.startswith("trainkit: error: training diverged at step 7 (epoch 0): the loss was non-finite; lr=0.1;")
    # checks every 10 steps, and before each checkpoint: the save after step 8 is refused
    assert "The run stopped at step 9 (checked every 10 steps and before every checkpoint)" in message
    assert "non-finite batch-norm statistics (from the bad batch's forward) in net.2.running_mean" in message
    assert "no checkpoint was written after the bad step: the last one this run wrote is from step 6" in message
    assert "None" not in message
    checkpoints = Path("runs/digits_mlp/planted/checkpoints")
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt", "previous.ckpt"]
    for path, step in ((checkpoints / "last.ckpt", 6), (checkpoints / "previous.ckpt", 3)):
        ckpt = torch.load(path, weights_only=True)
        assert ckpt["global_step"] == step and finite(ckpt["state_dict"]), path


@pytest.mark.parametrize("optimizer, mode", [("{name: sgd, lr: 0.1, momentum: 0.9, nesterov: true}", "found inf"),
                                             ("{name: adam, lr: 0.001}", "found inf"),
                                             ("{name: rmsprop, lr: 0.001}", "restored")])
def test_the_bad_update_is_skipped_on_the_device(optimizer, mode, capsys, tmp_path):
    saved = tmp_path / "at_failure.pt"
    code = main(["fit", "--config", str(DEFAULT_RECIPE), *FAST, f"--model.optimizer={optimizer}",
                 "--checkpoint.every_n_steps=1", "--diagnostics.nan_check_every_n_steps=1", "--trainer.max_epochs=1",
                 "--trainer.limit_val_batches=0", "--run.name=skip",
                 *planted(("planted.NaNAt", {"step": 3}), ("planted.SaveOnException", {"path": str(saved)}))])
    message = error(capsys)
    assert code == 1 and "training diverged at step 3 " in message and "stopped at step 4" in message, message
    assert f"skipped on the device ({mode})" in message
    # the weights and optimizer state in memory when the run stopped are those before step 3,
    # bit for bit: last.ckpt was written after step 2, and step 3's update never happened
    now, before = torch.load(saved, weights_only=True), torch.load("runs/digits_mlp/skip/checkpoints/last.ckpt", weights_only=True)
    assert before["global_step"] == 3 and now["global_step"] == 4
    for key, value in before["state_dict"].items():
        assert torch.equal(now["state_dict"][key], value), key
    for p, state in before["optimizer_states"][0]["state"].items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(now["optimizer"]["state"][p][key]), torch.as_tensor(value)), (p, key)


def test_a_stop_before_any_checkpoint_says_none_was_written(capsys):
    code = main(["fit", "--config", str(DEFAULT_RECIPE), *FAST, "--diagnostics.nan_check_every_n_steps=4",
                 "--trainer.max_epochs=1", "--run.name=early", *planted(("planted.NaNAt", {"step": 2}))])
    message = error(capsys)
    assert code == 1 and "training diverged at step 2 " in message and "stopped at step 4 (checked every 4 steps and before every checkpoint)" in message
    assert "this run wrote no checkpoint" in message and "intact" not in message, message
    assert not list(Path("runs/digits_mlp/early/checkpoints").glob("*.ckpt"))


def test_bad_nan_check_interval_is_bad_input(capsys):
    assert main(["fit", "--config", str(DEFAULT_RECIPE), *FAST, "--diagnostics.nan_check_every_n_steps=0"]) == 2
    assert "diagnostics.nan_check_every_n_steps: must be null" in capsys.readouterr().err
    assert not Path("runs").exists()
