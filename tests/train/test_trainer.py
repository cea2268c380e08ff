"""The trainer: world-size independence (FSDP2, gloo), exact resume after SIGKILL, export, freezing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_helpers import REPO, write_recipe

from unimedvl.errors import ConfigError
from unimedvl.train.config import TrainConfig
from unimedvl.train.schedule import lr_factor
from unimedvl.train.trainer import Trainer


def _losses(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "losses.jsonl").read_text().splitlines()]


def _train(recipe: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "unimedvl.train", str(recipe), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_every_recipe_matches_the_schema() -> None:
    recipes = sorted((REPO / "recipes").glob("*.yaml"))
    assert len(recipes) >= 6
    mixes = {}
    for path in recipes:
        config = TrainConfig.from_yaml(path)
        mixes[path.stem] = config.data.mix
    assert mixes["stage1-foundation"] == {"understanding": 0.75, "generation": 0.25}
    assert mixes["stage2-instruction"] == {"understanding": 0.40, "generation": 0.45, "interleaved": 0.10}
    assert mixes["stage3-unified"] == {"understanding": 0.37, "generation": 0.35, "interleaved": 0.25}
    assert [TrainConfig.from_yaml(REPO / f"recipes/stage{i}.yaml").total_steps
            for i in ("1-foundation", "2-instruction", "3-unified")] == [85000, 120000, 70000]


def test_recipe_errors_and_overrides(tmp_path: Path, train_corpus: Path) -> None:
    recipe = write_recipe(tmp_path, train_corpus)
    config = TrainConfig.from_yaml(recipe, ["optim.lr=3e-4", "total_steps=9"])
    assert config.optim.lr == 3e-4 and config.total_steps == 9
    with pytest.raises(ConfigError, match="unknown key"):
        TrainConfig.from_yaml(recipe, ["optim.learning_rate=1"])
    with pytest.raises(ConfigError, match="key=value"):
        TrainConfig.from_yaml(recipe, ["total_steps"])
    with pytest.raises(ConfigError, match="unknown families"):
        TrainConfig.from_yaml(recipe, ["data.mix={video: 1.0}"])
    with pytest.raises(ConfigError, match=r"precision must be one of 'fp32', 'bf16', got 'fp16'"):
        TrainConfig.from_yaml(recipe, ["precision=fp16"])
    with pytest.raises(ConfigError, match=r"optim.schedule must be one of"):
        TrainConfig.from_yaml(recipe, ["optim.schedule=linear"])


def test_schedule() -> None:
    assert lr_factor(0, 10, 100, "cosine", 0.0) == pytest.approx(0.1)
    assert lr_factor(10, 10, 100, "cosine", 0.0) == pytest.approx(1.0)
    assert lr_factor(100, 10, 100, "cosine", 0.01) == pytest.approx(0.01)
    assert lr_factor(55, 10, 100, "constant", 0.0) == 1.0


def test_two_processes_match_one(tmp_path: Path, train_corpus: Path) -> None:
    one = write_recipe(tmp_path / "one", train_corpus, total_steps=3, save_every=3)
    two = write_recipe(tmp_path / "two", train_corpus, total_steps=3, save_every=3)
    assert _train(one).wait(timeout=300) == 0
    torchrun = Path(sys.executable).parent / "torchrun"
    proc = subprocess.run([str(torchrun), "--nproc_per_node", "2", "-m", "unimedvl.train", str(two)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = _losses(tmp_path / "one" / "run"), _losses(tmp_path / "two" / "run")
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        assert x["tokens"] == y["tokens"]
        for key in ("loss", "ce", "mse", "grad_norm"):
            assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-6), (key, x, y)
    assert a[-1]["loss"] < a[0]["loss"]


def test_sigkill_and_resume_give_the_same_loss_curve(tmp_path: Path, train_corpus: Path) -> None:
    clean = write_recipe(tmp_path / "clean", train_corpus)
    assert _train(clean).wait(timeout=300) == 0
    killed = write_recipe(tmp_path / "killed", train_corpus)
    proc = _train(killed)
    marker = tmp_path / "killed" / "run" / "checkpoints" / "step_0000004" / "trainer.json"
    deadline = time.time() + 300
    while time.time() < deadline and not marker.exists() and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert marker.exists()
    assert _train(killed).wait(timeout=300) == 0
    a, b = _losses(tmp_path / "clean" / "run"), _losses(tmp_path / "killed" / "run")
    assert [x["step"] for x in b] == list(range(1, 7))
    for x, y in zip(a, b):
        for key in ("loss", "ce", "mse", "lr", "tokens"):
            assert x[key] == pytest.approx(y[key], rel=1e-6, abs=1e-7), (key, x, y)
    assert (tmp_path / "killed" / "run" / "loss_curve.png").is_file()
    assert any((tmp_path / "killed" / "run" / "tensorboard").iterdir())


def test_export_loads_and_freezing(tmp_path: Path, train_corpus: Path) -> None:
    from unimedvl.inference.engine import UniMedVL

    recipe = write_recipe(tmp_path, train_corpus, total_steps=2, save_every=2, freeze_und=True)
    trainer = Trainer(TrainConfig.from_yaml(recipe))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.fit()
    after = dict(trainer.model.named_parameters())
    und = "language_model.model.layers.0.mlp.up_proj.weight"
    gen = "language_model.model.layers.0.mlp_moe_gen.up_proj.weight"
    assert torch.equal(before[und], after[und]) and not torch.equal(before[gen], after[gen])
    assert torch.equal(before["vit_model.vision_model.post_layernorm.weight"], after["vit_model.vision_model.post_layernorm.weight"])
    out = trainer.export(tmp_path / "export")
    model = UniMedVL.from_pretrained(out)
    assert all(r.ok for r in model.load_reports)
    ema = trainer.ema[gen].to(torch.bfloat16).float()
    assert torch.equal(model.model.get_parameter(gen), ema)
    assert model.ask([], "What imaging modality is this?", max_new_tokens=3).token_ids


def test_cli_train_command(tmp_path: Path, train_corpus: Path, capsys) -> None:
    from unimedvl.cli import main

    recipe = write_recipe(tmp_path, train_corpus, total_steps=2, save_every=2)
    assert main(["train", str(recipe), "data.packs_per_step=2", "--export", str(tmp_path / "exp")]) == 0
    assert (tmp_path / "exp" / "ema.safetensors").is_file()
    assert "step 2: loss" in capsys.readouterr().out
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2


def test_bf16_autocast_trains_close_to_fp32(tmp_path: Path, train_corpus: Path) -> None:
    """The GPU's bf16 path (autocast, fp32 master weights), run on CPU: same losses to bf16 precision."""
    losses, params = {}, {}
    for precision in ("fp32", "bf16"):
        recipe = write_recipe(tmp_path / precision, train_corpus, total_steps=2, save_every=2, precision=precision,
                              **{"data.packs_per_step": 2})
        if precision == "bf16":
            with pytest.warns(UserWarning, match="bf16 on CPU"):
                trainer = Trainer(TrainConfig.from_yaml(recipe))
        else:
            trainer = Trainer(TrainConfig.from_yaml(recipe))
        losses[precision] = [trainer.train_step() for _ in range(2)]
        params[precision] = trainer.model.get_parameter("language_model.model.layers.0.self_attn.q_proj.weight")
        trainer.close()
    assert params["bf16"].dtype == torch.float32  # autocast computes in bf16; the optimiser updates fp32 weights
    for fp32, bf16 in zip(losses["fp32"], losses["bf16"]):
        assert bf16["ce"] != fp32["ce"]  # the matmuls really ran in bf16
        assert abs(bf16["ce"] - fp32["ce"]) < 0.03 * fp32["ce"] and abs(bf16["mse"] - fp32["mse"]) < 0.03 * fp32["mse"]
    assert not torch.equal(params["bf16"], params["fp32"]) and torch.allclose(params["bf16"], params["fp32"], atol=2e-3)


class _Planted:
    """Unpickling this object would write a marker file: the payload of a malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.write_text, (self.marker, "code ran"))


def test_resume_reads_safetensors_only_and_changes_world_size(tmp_path: Path, train_corpus: Path) -> None:
    import pickle

    clean = write_recipe(tmp_path / "clean", train_corpus, total_steps=4, save_every=2)
    assert _train(clean).wait(timeout=300) == 0
    resumed = write_recipe(tmp_path / "resumed", train_corpus, total_steps=2, save_every=2)
    assert _train(resumed).wait(timeout=300) == 0
    checkpoint = tmp_path / "resumed" / "run" / "checkpoints" / "step_0000002"
    assert {p.suffix for p in checkpoint.iterdir()} == {".safetensors", ".json"}
    marker = tmp_path / "marker.txt"
    for name in (".metadata", "__0_0.distcp"):  # where DCP's default reader would unpickle
        (checkpoint / name).write_bytes(pickle.dumps(_Planted(marker)))
    torchrun = Path(sys.executable).parent / "torchrun"
    proc = subprocess.run([str(torchrun), "--nproc_per_node", "2", "-m", "unimedvl.train", str(resumed), "total_steps=4"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not marker.exists()
    a, b = _losses(tmp_path / "clean" / "run"), _losses(tmp_path / "resumed" / "run")
    assert [x["step"] for x in b] == [1, 2, 3, 4]
    for x, y in zip(a, b):  # 1 process to step 2, then 2 processes: the curve of one uninterrupted process
        for key in ("loss", "ce", "mse", "grad_norm"):
            assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-6), (key, x, y)


def test_a_damaged_newest_checkpoint_and_a_torn_log_line_fall_back(tmp_path: Path, train_corpus: Path, capsys) -> None:  # noqa: ANN001
    """Issue 13, item 8: a torn last line of losses.jsonl or a corrupt newest checkpoint used to stop the run."""
    clean = write_recipe(tmp_path / "clean", train_corpus)
    trainer = Trainer(TrainConfig.from_yaml(clean))
    trainer.fit()
    trainer.close()
    damaged = write_recipe(tmp_path / "damaged", train_corpus, total_steps=4)
    trainer = Trainer(TrainConfig.from_yaml(damaged))
    trainer.fit()
    trainer.close()
    run = tmp_path / "damaged" / "run"
    newest = run / "checkpoints" / "step_0000004"
    for shard in newest.glob("*.safetensors"):
        shard.write_bytes(shard.read_bytes()[:100])  # a disk error / a partial copy
    with (run / "losses.jsonl").open("a") as handle:
        handle.write('{"step": 5, "loss": 0.')  # a kill mid-line
    config = TrainConfig.from_yaml(damaged, ["total_steps=6"])
    trainer = Trainer(config)
    trainer.fit()
    trainer.close()
    err = capsys.readouterr().err
    assert "step_0000004 cannot be read" in err and "resumed from step_0000002" in err
    a, b = _losses(tmp_path / "clean" / "run"), _losses(run)
    assert [x["step"] for x in b] == list(range(1, 7))
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-6, abs=1e-7)
    for shard in (run / "checkpoints" / "step_0000002").glob("*.safetensors"):
        shard.write_bytes(b"")
    for shard in (run / "checkpoints" / "step_0000006").glob("*.safetensors"):
        shard.write_bytes(b"")
    for shard in (run / "checkpoints" / "step_0000004").glob("*.safetensors"):
        shard.write_bytes(b"")
    from unimedvl.errors import CheckpointError

    with pytest.raises(CheckpointError, match="checkpoints in .* can be read"):
        Trainer(config).fit()


def test_pack_workers_change_nothing_but_where_packs_are_made(tmp_path: Path, train_corpus: Path) -> None:
    """data.workers: 1 makes the coming steps' packs in a worker process; the run is the same as with 0."""
    runs = {}
    for workers in (0, 1):
        recipe = write_recipe(tmp_path / f"w{workers}", train_corpus, total_steps=4, **{"data.workers": workers})
        trainer = Trainer(TrainConfig.from_yaml(recipe))
        try:
            runs[workers] = []
            for step in range(3):  # as fit() runs them
                trainer.step = step
                runs[workers].append(trainer.train_step())
            # a jump (as a resume makes) restarts the stream at the asked step
            assert [p.sample_ids for p in trainer.stream.packs(1)] == [
                trainer.packs.make(1, i).sample_ids for i in range(4)]
            weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        finally:
            trainer.close()
        runs[workers].append(weights)
    for a, b in zip(runs[0][:3], runs[1][:3]):
        assert a == b
    assert all(torch.equal(runs[0][3][n], runs[1][3][n]) for n in runs[0][3])
    with pytest.raises(ConfigError, match="data.workers must be >= 0"):
        TrainConfig.from_yaml(write_recipe(tmp_path / "bad", train_corpus), ["data.workers=-1"])
