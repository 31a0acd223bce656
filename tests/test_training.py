"""fairseq-train / fairseq-generate on a slice of Multi30k with a tiny transformer."""
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import TINY_MODEL, TRAINING, USER_DIR, bits, env, load, log_values, run_tool, train, train_args
from fairseq_slt.checkpoints import TASK_KEY, Checkpoint
from fairseq_slt.pruning import Mask, magnitude_mask, pruned_count

EMBED = "encoder.embed_tokens.weight"
TIED = ("decoder.embed_tokens.weight", "decoder.output_projection.weight")  # aliases of EMBED


def masked_reference(weights, mask, name):
    """What rewinding gives for state_dict entry ``name``: the weight times its mask (tied aliases share it)."""
    key = EMBED if name in TIED else name
    return weights[name] * mask[key] if key in mask else weights[name]


def saved_mask(path):
    return Mask.from_state_dict(load(path)["extra_state"][TASK_KEY]["mask"])


def assert_masked_weights_zero(checkpoint_path, mask):
    model = load(checkpoint_path)["model"]
    for name, keep in mask.items():
        assert float(model[name][~keep].abs().max()) == 0.0, name
        assert int((model[name][keep] != 0).sum()) > 0, name
    return model


def test_rewind_points_are_the_exact_weights_before_update_1_and_after_update_k(data_bin, dense_run, tmp_path):
    theta0, theta4 = load(dense_run["rewind0"]), load(dense_run["rewind4"])
    assert theta0["optimizer_history"][-1]["num_updates"] == 0
    assert theta4["optimizer_history"][-1]["num_updates"] == 4
    # the same seed and data rerun for exactly 4 updates ends at theta_4; 0 updates of training is theta_0
    rerun = str(tmp_path / "rerun")
    train(data_bin, rerun, "--prune-method", "none", max_update=4)
    after4 = load(os.path.join(rerun, "checkpoint_last.pt"))["model"]
    for name, tensor in theta4["model"].items():
        assert torch.equal(tensor, after4[name]), name
    assert any(not torch.equal(theta0["model"][n], theta4["model"][n]) for n in theta0["model"])
    # a rewind point is a regular fairseq checkpoint: fairseq-train restores its weights (and starts at update 0
    # with --reset-optimizer, so this run's own rewind point 0 is exactly what it restored)
    restored = str(tmp_path / "restored")
    train(data_bin, restored, "--prune-method", "none", "--restore-file", dense_run["rewind4"], "--reset-optimizer",
          "--reset-dataloader", "--reset-meters", "--reset-lr-scheduler", "--save-rewind-points", "0", max_update=2)
    start = load(os.path.join(restored, "checkpoint_rewind_0.pt"))["model"]
    assert all(torch.equal(start[n], theta4["model"][n]) for n in theta4["model"])


def test_slt_mask_is_exact_per_layer_and_start_weights_are_the_rewind_point(dense_run, slt_run):
    dense = load(dense_run["best"])["model"]
    mask = Mask.load(os.path.join(slt_run["dir"], "mask.pt"))
    assert EMBED in mask and "decoder.embed_tokens.weight" not in mask  # tied embedding: masked once
    assert not any(name.endswith("bias") or "layer_norm" in name for name in mask)
    assert all(keep.dim() == 2 for keep in mask.values())
    for name, keep in mask.items():
        assert int((~keep).sum()) == pruned_count(0.8, keep.numel()), name
    expected = magnitude_mask({n: dense[n] for n in mask}, 0.8)
    assert all(torch.equal(expected[n], mask[n]) for n in mask)
    for name, keep in mask.items():  # an independent reference: a stable sort by magnitude, lowest 80 % pruned
        order = torch.sort(dense[name].abs().reshape(-1), stable=True).indices
        reference = torch.ones(keep.numel(), dtype=torch.bool)
        reference[order[: round(0.8 * keep.numel())]] = False
        assert torch.equal(reference.view(keep.shape), keep), name
    # this run's update-0 weights are theta_4 of the dense run, times the mask, exactly
    theta4, start = load(dense_run["rewind4"])["model"], load(os.path.join(slt_run["dir"], "checkpoint_rewind_0.pt"))
    for name, tensor in start["model"].items():
        assert torch.equal(tensor, masked_reference(theta4, mask, name)), name
    assert torch.equal(start["model"]["decoder.embed_tokens.weight"], start["model"][EMBED])
    # after training: masked weights exactly 0, sparsity and masked_nonzero in the log lines
    trained = assert_masked_weights_zero(slt_run["best"], saved_mask(slt_run["best"]))
    assert torch.equal(trained["decoder.embed_tokens.weight"], trained[EMBED])
    assert set(log_values(slt_run["stdout"], "masked_nonzero")) == {0.0}
    assert min(log_values(slt_run["stdout"], "sparsity")) >= 0.7999
    report = __import__("json").load(open(os.path.join(slt_run["dir"], "mask_report.json")))
    assert report["layers"][EMBED]["sparsity"] == round(pruned_count(0.8, mask[EMBED].numel()) / mask[EMBED].numel(), 6)


def test_lt_rewinds_to_theta0_and_global_scope(data_bin, dense_run, tmp_path):
    save = str(tmp_path / "lt")
    # another seed than the dense run's: without the rewind, its start weights would be another initialisation
    train(data_bin, save, "--prune-method", "lt", "--prune-sparsity", "0.5", "--prune-scope", "global",
          "--prune-mask-from", dense_run["best"], "--prune-rewind-from", dense_run["rewind0"],
          "--save-rewind-points", "0", "--prune-params", r"layers\.", "--seed", "2", max_update=4)
    mask = Mask.load(os.path.join(save, "mask.pt"))
    assert EMBED not in mask and all("layers." in n for n in mask)
    dense = load(dense_run["best"])["model"]
    assert all(torch.equal(mask[n], magnitude_mask({k: dense[k] for k in mask}, 0.5, scope="global")[n]) for n in mask)
    assert mask.pruned() == pruned_count(0.5, mask.total())
    start, theta0 = load(os.path.join(save, "checkpoint_rewind_0.pt"))["model"], load(dense_run["rewind0"])["model"]
    assert all(torch.equal(start[n], masked_reference(theta0, mask, n)) for n in start)
    assert_masked_weights_zero(os.path.join(save, "checkpoint_last.pt"), mask)
    # the same run without rewinding would have started elsewhere: seed 2's initialisation differs from theta_0
    unrewound = str(tmp_path / "seed2")
    train(data_bin, unrewound, "--prune-method", "none", "--seed", "2", "--save-rewind-points", "0", max_update=1)
    seed2 = load(os.path.join(unrewound, "checkpoint_rewind_0.pt"))["model"]
    assert not torch.equal(seed2["encoder.layers.0.fc1.weight"], theta0["encoder.layers.0.fc1.weight"])


def test_update_freq_and_restored_dense_optimizer_keep_masked_weights_zero(data_bin, dense_run, tmp_path):
    common = ["--prune-method", "slt", "--prune-sparsity", "0.8", "--prune-mask-from", dense_run["best"],
              "--prune-rewind-from", dense_run["rewind4"]]
    save, board = str(tmp_path / "freq2"), str(tmp_path / "tensorboard")
    result = train(data_bin, save, *common, "--update-freq", "2", "--tensorboard-logdir", board, max_update=6)
    assert_masked_weights_zero(os.path.join(save, "checkpoint_last.pt"), Mask.load(os.path.join(save, "mask.pt")))
    assert set(log_values(result.stdout, "masked_nonzero")) == {0.0}
    # the pruning metrics reach TensorBoard with fairseq's own, per update, for training and validation
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    for split in ("train_inner", "valid"):
        events = EventAccumulator(os.path.join(board, split))
        events.Reload()
        assert {"sparsity", "masked_nonzero", "loss"} <= set(events.Tags()["scalars"]), split
        assert all(abs(e.value - 0.8) < 1e-3 for e in events.Scalars("sparsity")), split
        assert all(e.value == 0 for e in events.Scalars("masked_nonzero")), split
    # Adam moments of the dense run restored (no --reset-optimizer): they must not revive pruned weights
    save = str(tmp_path / "restored_optimizer")
    # (without --reset-dataloader fairseq hands over the dense run's task state: another run's, so this starts afresh)
    result = train(data_bin, save, *common, "--restore-file", dense_run["last"], "--reset-meters",
                   "--reset-lr-scheduler", max_update=24)
    assert "Loaded checkpoint" in result.stdout and "num_updates 24" in result.stdout
    assert "belongs to another pruning run" in result.stdout
    mask = Mask.load(os.path.join(save, "mask.pt"))
    dense = load(dense_run["best"])["model"]
    assert all(torch.equal(mask[n], magnitude_mask({k: dense[k] for k in mask}, 0.8)[n]) for n in mask)
    assert_masked_weights_zero(os.path.join(save, "checkpoint_last.pt"), mask)


def test_resume_restores_the_mask_from_the_checkpoint(data_bin, dense_run, tmp_path):
    mask_source = str(tmp_path / "source.pt")
    shutil.copy(dense_run["best"], mask_source)
    common = ["--prune-method", "slt", "--prune-sparsity", "0.8", "--prune-mask-from", mask_source,
              "--prune-rewind-from", dense_run["rewind4"]]
    save = str(tmp_path / "resume")
    train(data_bin, save, *common, max_update=6)  # "interrupted" after 6 updates
    first = saved_mask(os.path.join(save, "checkpoint_last.pt"))
    shutil.copy(dense_run["rewind0"], mask_source)  # a recomputed mask would now differ
    assert any(not torch.equal(first[n], magnitude_mask({n: load(mask_source)["model"][n] for n in first}, 0.8)[n])
               for n in first)
    result = train(data_bin, save, *common, max_update=12)  # the same command: resumes with the stored mask
    assert "Loaded checkpoint" in result.stdout and "num_updates 12" in result.stdout
    assert "with its stored mask" in result.stdout and "starting mask" not in result.stdout  # none recomputed
    resumed = saved_mask(os.path.join(save, "checkpoint_last.pt"))
    assert all(torch.equal(first[n], resumed[n]) for n in first)
    assert_masked_weights_zero(os.path.join(save, "checkpoint_last.pt"), first)
    # the mask source moved: another identity, refused before anything is touched
    moved = str(tmp_path / "moved.pt")
    shutil.copy(mask_source, moved)
    before = {f: os.path.getmtime(os.path.join(save, f)) for f in os.listdir(save)}
    refused = train(data_bin, save, *[moved if a == mask_source else a for a in common], max_update=14, check=False)
    assert refused.returncode != 0 and refused.stderr.strip().splitlines()[-1].startswith(
        f"fairseq-slt: error: --save-dir {save} belongs to another run (--prune-mask-from {mask_source} there, "
        f"{moved} here)")
    assert {f: os.path.getmtime(os.path.join(save, f)) for f in os.listdir(save)} == before


def test_generate_scores_every_checkpoint_kind_with_sacrebleu_from_any_folder(data_bin, dense_run, slt_run, tmp_path):
    for checkpoint in (slt_run["best"], os.path.join(slt_run["dir"], "checkpoint_rewind_4.pt"), dense_run["best"]):
        result = run_tool("fairseq-generate", data_bin, "--user-dir", "fairseq_slt", "--task", "translation_slt",
                          "--path", checkpoint, "--beam", 2, "--batch-size", 64, "--max-len-b", 20,
                          "--remove-bpe", "sentencepiece", "--scoring", "sacrebleu", "--cpu", cwd=str(tmp_path))
        assert re.search(r"Generate test with beam=2: BLEU = \d+\.\d+ ", result.stdout), result.stdout[-500:]


def test_stock_fairseq_loads_a_pruned_checkpoint(data_bin, slt_run):
    script = (
        "import argparse, torch\n"
        "torch.serialization.add_safe_globals([argparse.Namespace])\n"
        "from fairseq import checkpoint_utils, tasks\n"
        "from fairseq.tasks.translation import TranslationConfig\n"
        "from omegaconf import OmegaConf\n"
        f"cfg = OmegaConf.structured(TranslationConfig(data={data_bin!r}, source_lang='en', target_lang='de'))\n"
        "task = tasks.TASK_REGISTRY['translation'].setup_task(cfg)\n"
        f"models, _ = checkpoint_utils.load_model_ensemble([{slt_run['best']!r}], task=task)\n"
        "w = models[0].encoder.layers[0].fc1.weight\n"
        "print('zeros', float((w == 0).float().mean()))\n"
    )
    result = run_tool("python", "-c", script)
    assert abs(float(result.stdout.split("zeros")[-1]) - 0.8) < 0.001


def test_dense_gradients_train_the_same_weights_with_adam_and_no_clipping(data_bin, dense_run, tmp_path):
    """--prune-dense-gradients leaves pruned weights' gradients in place (dense Adam state) and zeroes only the
    weights after each step: Adam is elementwise and nothing is clipped, so the kept weights train the same."""
    common = ["--prune-method", "slt", "--prune-sparsity", "0.8", "--prune-mask-from", dense_run["best"],
              "--prune-rewind-from", dense_run["rewind4"], "--clip-norm", "0"]
    runs = {}
    for label, extra in (("zeroed", []), ("dense", ["--prune-dense-gradients"])):
        save = str(tmp_path / label)
        result = train(data_bin, save, *common, *extra, max_update=8)
        assert set(log_values(result.stdout, "masked_nonzero")) == {0.0}
        runs[label] = (load(os.path.join(save, "checkpoint_last.pt")), log_values(result.stdout, "gnorm"))
    mask = saved_mask(os.path.join(tmp_path, "dense", "checkpoint_last.pt"))
    zeroed, dense = runs["zeroed"][0]["model"], runs["dense"][0]["model"]
    for name in zeroed:
        assert torch.equal(zeroed[name], dense[name]), name  # the same weights, pruned ones exactly 0 in both
    assert_masked_weights_zero(os.path.join(tmp_path, "dense", "checkpoint_last.pt"), mask)
    assert runs["dense"][1] != runs["zeroed"][1]  # the gradients did differ: pruned weights' ones were kept
    assert load(os.path.join(tmp_path, "dense", "checkpoint_last.pt"))["extra_state"][TASK_KEY]["identity"][
        "prune_dense_gradients"] is True


@pytest.mark.parametrize("options", [[], ["--update-freq", "2", "--clip-norm", "0.1", "--fp16", "--fp16-no-flatten-grads",
                                          "--lr-scheduler", "fixed"],
                                     # the training split by another name: its batches stay fairseq's too
                                     ["--train-subset", "valid", "--valid-subset", "test", "--max-tokens", "600"]])
def test_a_dense_run_under_the_plugin_trains_fairseqs_own_weights_bit_for_bit(data_bin, tmp_path, options):
    """The same command under the plugin's task and criterion (--prune-method none, rewind points saved) and
    under fairseq's own translation task and criterion: the same weights, bit for bit, and the same losses."""
    runs = {"fairseq": ["--task", "translation", "--criterion", "label_smoothed_cross_entropy"],
            "plugin": ["--user-dir", USER_DIR, "--task", "translation_slt", "--criterion",
                       "label_smoothed_cross_entropy_slt", "--prune-method", "none", "--save-rewind-points", "0,3"]}
    losses, weights = {}, {}
    for name, extra in runs.items():
        save = str(tmp_path / name)
        result = run_tool("fairseq-train", data_bin, *TINY_MODEL, *TRAINING, "--max-update", 8, "--log-interval", 1,
                          *options, *extra, "--save-dir", save)
        losses[name] = [re.search(r" loss=([-\d.e]+), nll_loss=([-\d.e]+)", line).groups()
                        for line in result.stdout.splitlines() if "| train_inner |" in line]
        weights[name] = load(os.path.join(save, "checkpoint_last.pt"))["model"]
    assert len(losses["plugin"]) == 8 and losses["plugin"] == losses["fairseq"]
    assert weights["plugin"].keys() == weights["fairseq"].keys()
    for key, value in weights["fairseq"].items():
        assert torch.equal(bits(weights["plugin"][key]), bits(value)), key


def test_sparsity_and_masked_nonzero_are_logged_under_any_criterion(data_bin, tmp_path):
    """The task logs them, not the plugin's criterion: with fairseq's own --criterion cross_entropy the log lines
    showed neither (the run was pruned all the same)."""
    save = str(tmp_path / "mp_ce")
    args = [a for a in train_args(data_bin, save, "--prune-method", "mp", "--prune-sparsity", "0.8", "--prune-start",
                                  "2", "--prune-end", "6", "--prune-frequency", "2", "--criterion", "cross_entropy",
                                  "--log-interval", "1", max_update=8) if a not in ("--label-smoothing", "0.1")]
    result = run_tool("fairseq-train", *args)
    assert "'_name': 'cross_entropy'" in result.stdout
    lines = "\n".join(line for line in result.stdout.splitlines() if "| train_inner |" in line or "valid on" in line)
    sparsity = log_values(lines, "sparsity")
    assert len(sparsity) == 8 + 1 and abs(sparsity[-1] - 0.8) < 0.005 and sparsity[0] < 0.01  # 8 updates, 1 validation
    assert log_values(lines, "masked_nonzero") == [0.0] * 9


def test_fairseq_hydra_train_runs_the_plugin_from_a_config_file(data_bin, tmp_path):
    """fairseq-hydra-train composes its configuration before it imports common.user_dir, so `task=translation_slt`
    cannot name the plugin's task; a config file that gives each group as a dict with its _name does (README)."""
    save, config = tmp_path / "hydra_mp", tmp_path / "config"
    config.mkdir()
    (config / "slt.yaml").write_text(f"""# @package _global_
common: {{user_dir: {USER_DIR}, cpu: true, log_interval: 1}}
task: {{_name: translation_slt, data: {data_bin}, prune_method: mp, prune_sparsity: 0.8, prune_start: 2, prune_end: 6,
       prune_frequency: 2}}
criterion: {{_name: cross_entropy}}
model: {{_name: transformer, encoder_layers: 1, decoder_layers: 1, encoder_embed_dim: 32, decoder_embed_dim: 32,
        encoder_ffn_embed_dim: 64, decoder_ffn_embed_dim: 64, encoder_attention_heads: 2, decoder_attention_heads: 2,
        share_all_embeddings: true}}
optimizer: {{_name: adam}}
lr_scheduler: {{_name: fixed}}
optimization: {{max_update: 8, lr: [0.001]}}
dataset: {{max_tokens: 1500, num_workers: 0}}
checkpoint: {{save_dir: {save}, no_epoch_checkpoints: true}}
""")
    result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "fairseq-hydra-train"), "--config-dir",
                             str(config), "--config-name", "slt", f"hydra.run.dir={tmp_path / 'hydra'}"],
                            env=env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert Checkpoint(str(save / "checkpoint_last.pt")).mask().sparsity() == pytest.approx(0.8, abs=0.005)
    assert "masked_nonzero=0" in result.stdout + result.stderr
