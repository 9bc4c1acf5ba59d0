"""Launcher: verl's Hydra config composed with searchgym's overrides passes verl's validation."""

import pytest
from omegaconf import OmegaConf

from searchgym.training.verl_data import VerlBackendError
from searchgym.training.verl_launch import (
    VerlLaunchConfig,
    build_overrides,
    compose_config,
    objective_overrides,
    prepare_launch,
    validate_composed,
)

VERL_OBJECTIVES = ("grpo", "entropy_bonus", "clip_higher", "clip_cov", "kl_cov", "forking_tokens")


def _write_rows(path):
    """A one-row verl parquet in the exported format (an env id of a world task: the
    launcher's row check does not build the world)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{
        "data_source": "searchgym/MultiHop-v0", "prompt": [{"role": "user", "content": "Question: q?"}],
        "ability": "search", "reward_model": {"style": "rule", "ground_truth": {"target": ["a"]}},
        "extra_info": {"env_id": "searchgym/MultiHop-v0", "split": "train", "index": 0}, "agent_name": "searchgym_env",
    }]), path)


def _cfg(tmp_path, **kw):
    base = dict(model=str(tmp_path / "model"), out_dir=str(tmp_path / "run"),
                train_files=[str(tmp_path / "t.parquet")], val_files=[str(tmp_path / "v.parquet")])
    base.update(kw)
    return VerlLaunchConfig(**base)


@pytest.mark.parametrize("objective", VERL_OBJECTIVES)
def test_every_verl_objective_composes_and_validates(tmp_path, objective):
    cfg = _cfg(tmp_path, objective=objective)
    composed = compose_config(build_overrides(cfg, cfg.train_files, cfg.val_files))
    validate_composed(composed)
    actor = composed.actor_rollout_ref.actor
    env_vars = composed.ray_kwargs.ray_init.runtime_env.env_vars
    assert env_vars.VERL_USE_EXTERNAL_MODULES == "searchgym.training.verl_plugin"
    assert composed.actor_rollout_ref.rollout.agent.default_agent_loop == "searchgym_env"
    assert composed.actor_rollout_ref.rollout.agent.agent_loop_config_path.endswith("agent_loops.yaml")
    assert composed.algorithm.adv_estimator == "grpo"
    if objective == "entropy_bonus":
        assert actor.entropy_coeff > 0
    if objective == "clip_higher":
        assert actor.clip_ratio_high > actor.clip_ratio_low
    if objective in ("clip_cov", "kl_cov"):
        assert actor.policy_loss.loss_mode == objective
    if objective == "forking_tokens":
        assert actor.calculate_entropy is True
        assert float(env_vars.SEARCHGYM_FORKING_RHO) == pytest.approx(0.2)
        assert isinstance(env_vars.SEARCHGYM_FORKING_RHO, str)  # Ray env vars must be strings
    else:
        assert "SEARCHGYM_FORKING_RHO" not in env_vars


def test_objective_overrides_use_registry_values_and_user_overrides():
    ov, env = objective_overrides("forking_tokens", {"rho": 0.1})
    assert env == {"SEARCHGYM_FORKING_RHO": "0.1"}
    ov, _ = objective_overrides("clip_cov", {"clip_cov_ratio": 0.0002, "clip_cov_lb": 1.0})
    assert "actor_rollout_ref.actor.policy_loss.clip_cov_ratio=0.0002" in ov
    with pytest.raises(ValueError, match="rho"):
        objective_overrides("forking_tokens", {"rho": 2.0})


def test_er_shaped_is_refused_with_a_reason():
    with pytest.raises(VerlBackendError, match="hidden states"):
        objective_overrides("er_shaped")


def test_validation_failure_is_a_clear_error(tmp_path):
    # 3 GPUs cannot split a mini-batch of 32 prompts x 5 rollouts evenly: verl rejects it
    cfg = _cfg(tmp_path, n_gpus=3, extra_overrides=["actor_rollout_ref.actor.ppo_mini_batch_size=7"])
    composed = compose_config(build_overrides(cfg, cfg.train_files, cfg.val_files))
    with pytest.raises(VerlBackendError, match="validate_config"):
        validate_composed(composed)


def test_bad_override_names_the_problem(tmp_path):
    cfg = _cfg(tmp_path, extra_overrides=["actor_rollout_ref.actor.no_such_key=1"])
    with pytest.raises(VerlBackendError, match="no_such_key"):
        compose_config(build_overrides(cfg, cfg.train_files, cfg.val_files))


def test_prepare_launch_writes_a_config_main_ppo_can_load(tmp_path):
    for f in ("t.parquet", "v.parquet"):
        _write_rows(tmp_path / f)
    cfg = _cfg(tmp_path, objective="kl_cov", ray_address="ray://head:10001", retriever_url="http://h:8000",
               max_turns=3, extra_overrides=["trainer.total_training_steps=2"])
    plan = prepare_launch(cfg)
    assert plan.command[1:3] == ["-m", "verl.trainer.main_ppo"]
    assert f"--config-path={(tmp_path / 'run').resolve()}" in plan.command
    assert plan.env == {"RAY_ADDRESS": "ray://head:10001"}
    # what main_ppo's @hydra.main will compose from --config-path/--config-name
    again = compose_config([], config_dir=str(plan.config_file.parent), config_name="verl_config")
    validate_composed(again)
    assert again.trainer.total_training_steps == 2  # --set wins
    assert again.actor_rollout_ref.actor.policy_loss.loss_mode == "kl_cov"
    loops = OmegaConf.load(again.actor_rollout_ref.rollout.agent.agent_loop_config_path)
    assert loops[0]._target_ == "searchgym.training.verl_loop.SearchEnvAgentLoop"
    assert loops[0].retriever_url == "http://h:8000" and loops[0].max_turns == 3


def test_missing_model_and_bad_sizes_are_rejected(tmp_path):
    with pytest.raises(VerlBackendError, match="--model"):
        prepare_launch(_cfg(tmp_path, model=""))
    with pytest.raises(VerlBackendError, match="ppo_mini_batch_size"):
        prepare_launch(_cfg(tmp_path, train_batch_size=8, ppo_mini_batch_size=16))


def test_cli_dry_run_prints_the_command(tmp_path, capsys):
    from searchgym.cli import main

    for f in ("t.parquet", "v.parquet"):
        _write_rows(tmp_path / f)
    rc = main(["train", "rl", "--backend", "verl", "--objective", "clip_higher", "--model", str(tmp_path),
               "--train-files", str(tmp_path / "t.parquet"), "--val-files", str(tmp_path / "v.parquet"),
               "--out", str(tmp_path / "run"), "--set", "trainer.total_training_steps=1", "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "verl.trainer.main_ppo" in out and (tmp_path / "run" / "verl_config.yaml").is_file()
    rc = main(["train", "rl", "--backend", "verl", "--objective", "er_shaped", "--model", str(tmp_path),
               "--train-files", str(tmp_path / "t.parquet"), "--val-files", str(tmp_path / "v.parquet"),
               "--out", str(tmp_path / "run2"), "--dry-run"])
    assert rc == 2 and "hidden states" in capsys.readouterr().err
