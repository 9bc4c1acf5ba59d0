"""verl backend, launch: `searchgym train rl --backend verl` as a validated verl run.

:func:`prepare_launch` / :func:`launch`: compose verl's Hydra config ``ppo_trainer`` with
searchgym's overrides (data, model, agent loop, objective), validate it with verl's own
``validate_config``, write it, and run ``python -m verl.trainer.main_ppo`` on it.

The objectives map onto verl as follows (:func:`objective_overrides`, docs/scale-out.md):
``grpo``, ``entropy_bonus``, ``clip_higher``, ``clip_cov`` and ``kl_cov`` become verl's own
config keys (``actor.clip_ratio_*``, ``actor.entropy_coeff``, ``actor.policy_loss.*``);
``forking_tokens`` runs through :mod:`searchgym.training.verl_plugin`, loaded in every
worker by ``VERL_USE_EXTERNAL_MODULES``; ``er_shaped`` is not available on verl (its
workers do not return final-norm hidden states).

Imports verl at the top: a launch composes verl's config (only `train rl --backend verl`
imports this module).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium
import verl
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.utils.config import validate_config

import searchgym.configs
import searchgym.envs  # noqa: F401  (registers searchgym/* ids)
from searchgym.envs.registry import load_persistent_tasks
from searchgym.retrieval.fileio import atomic_write_text, check_output
from searchgym.training.objectives import make_objective
from searchgym.training.verl_data import (
    AGENT_NAME, VerlBackendError, export_rows, validate_rows, write_export_parquet,
)

__all__ = ["VerlLaunchConfig", "LaunchPlan", "objective_overrides", "build_overrides", "compose_config",
           "validate_composed", "prepare_launch", "launch", "agent_loops_yaml", "write_agent_loops_yaml"]

# verl_plugin's MODULE_NAME and RHO_ENV, spelled out: importing the plugin patches verl's
# loss in this process (it is meant for the workers)
PLUGIN_MODULE = "searchgym.training.verl_plugin"
RHO_ENV = "SEARCHGYM_FORKING_RHO"


def agent_loops_yaml() -> Path:
    """Path of the packaged agent-loop registration YAML."""
    return Path(searchgym.configs.__file__).resolve().parent / "verl" / "agent_loops.yaml"


@dataclass
class VerlLaunchConfig:
    """What `searchgym train rl --backend verl` turns into a verl run."""

    objective: str = "grpo"
    model: str = ""
    env_id: str = "searchgym/MultiHop-v0"
    out_dir: str = "runs/verl"
    objective_overrides: dict = field(default_factory=dict)
    train_files: list[str] = field(default_factory=list)  # empty: export from env_id
    val_files: list[str] = field(default_factory=list)
    train_split: str = "train"
    val_split: str = "validation"
    export_limit: int | None = None
    env_kwargs: dict = field(default_factory=dict)
    retriever_url: str | None = None
    max_turns: int | None = None
    n_gpus: int = 1
    nnodes: int = 1
    ray_address: str | None = None
    rollout: str = "vllm"
    tensor_parallel: int = 1
    gpu_memory_utilization: float = 0.5
    train_batch_size: int = 64
    rollout_n: int = 5
    ppo_mini_batch_size: int = 32
    micro_batch_size_per_gpu: int = 4
    max_prompt_length: int = 512
    max_response_length: int = 1024
    lr: float = 1e-6
    kl_loss_coef: float = 0.001
    total_epochs: int = 1
    total_training_steps: int | None = None
    experiment_name: str = ""
    extra_overrides: list[str] = field(default_factory=list)
    data_source_map: dict = field(default_factory=dict)  # Search-R1 data_source -> env id
    force: bool = False  # replace an out_dir that is not a verl run folder

    def validate(self) -> None:
        if not self.model:
            raise VerlBackendError("--model is required (a HF model directory or hub id)")
        if self.rollout not in ("vllm", "sglang", "trtllm"):
            raise VerlBackendError(f"rollout {self.rollout!r}: verl 0.9.1 has vllm, sglang, trtllm")
        for name in ("n_gpus", "nnodes", "train_batch_size", "rollout_n", "ppo_mini_batch_size",
                     "micro_batch_size_per_gpu", "max_prompt_length", "max_response_length", "total_epochs"):
            if int(getattr(self, name)) < 1:
                raise VerlBackendError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.ppo_mini_batch_size > self.train_batch_size:
            raise VerlBackendError(
                f"ppo_mini_batch_size ({self.ppo_mini_batch_size}) > train_batch_size ({self.train_batch_size})"
            )
        for ov in self.extra_overrides:
            if "=" not in ov:
                raise VerlBackendError(f"--set {ov!r} is not KEY=VALUE")


def _q(value: Any) -> str:
    """A Hydra override value that stays a string (quoted)."""
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def objective_overrides(name: str, overrides: dict | None = None) -> tuple[list[str], dict[str, str]]:
    """Hydra overrides and worker env vars that realise objective ``name`` in verl.

    Reads the objective's typed defaults from searchgym's registry (updated by
    ``overrides``), so both backends use the same numbers.

    Returns:
        (hydra overrides, env vars for every Ray worker).
    Raises:
        VerlBackendError for an unknown objective or one verl cannot run (``er_shaped``).
    """
    obj = make_objective(name, overrides or {})
    if getattr(obj, "needs_hidden_states", False) or name == "er_shaped":
        raise VerlBackendError(
            f"objective {name!r} needs the policy's final-norm hidden states per response; verl 0.9.1's "
            "actor workers do not return them, so it runs only on the embedded backend (--backend embedded)"
        )
    c = obj.config
    actor = "actor_rollout_ref.actor"
    ov = [
        f"{actor}.clip_ratio_low={c.clip_ratio_low}",
        f"{actor}.clip_ratio_high={c.clip_ratio_high}",
        f"{actor}.clip_ratio_c={c.clip_ratio_c}",
        f"{actor}.entropy_coeff={c.entropy_coeff}",
        f"{actor}.loss_agg_mode={c.loss_agg_mode}",
        # verl's own loss names: vanilla, clip_cov, kl_cov (no plugin needed for these).
        f"{actor}.policy_loss.loss_mode={obj.policy_loss}",
    ]
    for key in ("clip_cov_ratio", "clip_cov_lb", "clip_cov_ub", "kl_cov_ratio", "ppo_kl_coef"):
        if hasattr(c, key):
            ov.append(f"{actor}.policy_loss.{key}={getattr(c, key)}")
    env: dict[str, str] = {}
    if hasattr(c, "rho"):  # forking_tokens: mask applied in verl's ppo_loss by the plugin
        env[RHO_ENV] = str(c.rho)
        ov.append(f"{actor}.calculate_entropy=true")
    return ov, env


def build_overrides(cfg: VerlLaunchConfig, train_files: list[str], val_files: list[str],
                    agent_yaml: str | Path | None = None) -> list[str]:
    """All Hydra overrides of a launch (ours first, the user's ``--set`` last so they win)."""
    obj_ov, worker_env = objective_overrides(cfg.objective, cfg.objective_overrides)
    worker_env = {"VERL_USE_EXTERNAL_MODULES": PLUGIN_MODULE, **worker_env}
    arr = "actor_rollout_ref"
    name = cfg.experiment_name or f"{cfg.env_id.replace('/', '_')}-{cfg.objective}"
    ov = [
        f"data.train_files={_hydra_list(train_files)}",
        f"data.val_files={_hydra_list(val_files)}",
        "data.prompt_key=prompt",
        f"data.train_batch_size={cfg.train_batch_size}",
        f"data.max_prompt_length={cfg.max_prompt_length}",
        f"data.max_response_length={cfg.max_response_length}",
        "data.return_raw_chat=true",
        f"{arr}.model.path={_q(cfg.model)}",
        f"{arr}.actor.optim.lr={cfg.lr}",
        f"{arr}.actor.ppo_mini_batch_size={cfg.ppo_mini_batch_size}",
        f"{arr}.actor.ppo_micro_batch_size_per_gpu={cfg.micro_batch_size_per_gpu}",
        f"{arr}.actor.use_kl_loss={'true' if cfg.kl_loss_coef > 0 else 'false'}",
        f"{arr}.actor.kl_loss_coef={cfg.kl_loss_coef}",
        f"{arr}.actor.kl_loss_type=low_var_kl",
        f"{arr}.rollout.name={cfg.rollout}",
        f"{arr}.rollout.n={cfg.rollout_n}",
        f"{arr}.rollout.tensor_model_parallel_size={cfg.tensor_parallel}",
        f"{arr}.rollout.gpu_memory_utilization={cfg.gpu_memory_utilization}",
        f"{arr}.rollout.log_prob_micro_batch_size_per_gpu={cfg.micro_batch_size_per_gpu}",
        f"{arr}.rollout.calculate_log_probs=true",
        f"{arr}.ref.log_prob_micro_batch_size_per_gpu={cfg.micro_batch_size_per_gpu}",
        f"{arr}.rollout.agent.agent_loop_config_path={_q(agent_yaml or agent_loops_yaml())}",
        f"{arr}.rollout.agent.default_agent_loop={AGENT_NAME}",
        "algorithm.adv_estimator=grpo",
        "algorithm.use_kl_in_reward=false",
        f"trainer.n_gpus_per_node={cfg.n_gpus}",
        f"trainer.nnodes={cfg.nnodes}",
        f"trainer.total_epochs={cfg.total_epochs}",
        f"trainer.project_name=searchgym",
        f"trainer.experiment_name={_q(name)}",
        f"trainer.default_local_dir={_q(Path(cfg.out_dir).resolve() / 'checkpoints')}",
        "trainer.logger=[console]",
        "trainer.val_before_train=false",
    ]
    if cfg.total_training_steps:
        ov.append(f"trainer.total_training_steps={cfg.total_training_steps}")
    ov += obj_ov
    for key, value in worker_env.items():
        ov.append(f"+ray_kwargs.ray_init.runtime_env.env_vars.{key}={_q(value)}")
    ov += list(cfg.extra_overrides)
    return ov


def write_agent_loops_yaml(cfg: VerlLaunchConfig, path: str | Path) -> Path:
    """Write the run's agent-loop registration (the packaged entry plus this run's kwargs).

    verl's workers load this file (``rollout.agent.agent_loop_config_path``) and pass the
    extra keys to :class:`SearchEnvAgentLoop` as keyword arguments.
    """
    entries = OmegaConf.to_container(OmegaConf.load(agent_loops_yaml()))
    for entry in entries:
        if entry.get("name") == AGENT_NAME:
            entry["env_kwargs"] = dict(cfg.env_kwargs)
            entry["retriever_url"] = cfg.retriever_url
            entry["max_turns"] = cfg.max_turns
            entry["data_source_map"] = dict(cfg.data_source_map)
    path = Path(path)
    atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(entries)))
    return path


def _hydra_list(items: list[str]) -> str:
    return "[" + ",".join(_q(i) for i in items) + "]"


def _verl_config_dir() -> str:
    return str(Path(verl.__file__).resolve().parent / "trainer" / "config")


def compose_config(overrides: list[str], config_dir: str | None = None, config_name: str = "ppo_trainer"):
    """Compose verl's Hydra config ``config_name`` (default ``ppo_trainer``) with ``overrides``.

    Raises VerlBackendError naming the override Hydra rejected.
    """
    try:
        with initialize_config_dir(config_dir=config_dir or _verl_config_dir(), version_base=None):
            return compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        raise VerlBackendError(f"verl's Hydra config rejected the overrides: {exc}") from None


def validate_composed(cfg) -> None:
    """Run verl's own ``validate_config`` on a composed config (as ``main_ppo`` does)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            validate_config(cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    except (AssertionError, ValueError, KeyError, TypeError) as exc:
        raise VerlBackendError(f"verl's validate_config rejected the config: {exc}") from None


@dataclass
class LaunchPlan:
    """A validated verl run: the written config, the command and its environment."""

    config_file: Path
    command: list[str]
    env: dict[str, str]
    overrides: list[str]

    def shell(self) -> str:
        """The command as one shell line (env assignments first)."""
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return (prefix + " " if prefix else "") + " ".join(shlex.quote(c) for c in self.command)


def _is_verl_run_dir(path: Path) -> bool:
    return any((path / n).exists() for n in ("verl_config.yaml", "verl_overrides.txt", "agent_loops.yaml"))


def prepare_launch(cfg: VerlLaunchConfig, export: bool = True) -> LaunchPlan:
    """Check everything, then export data if needed and write verl's validated config;
    return the plan.

    Order matters: the config values, the objective, the ``out_dir`` (a non-empty folder
    that is no verl run folder is refused unless ``cfg.force``), the rows of given
    ``train_files``/``val_files`` (:func:`validate_rows`) and verl's own config validation
    all pass before anything is built (world, index) or written. Then writes
    ``<out_dir>/verl_config.yaml`` (the composed, validated config),
    ``<out_dir>/verl_overrides.txt`` (one override per line) and ``agent_loops.yaml``.
    """
    cfg.validate()
    objective_overrides(cfg.objective, cfg.objective_overrides)  # refuses er_shaped & bad fields first
    out_dir = Path(cfg.out_dir).resolve()
    check_output(out_dir, _is_verl_run_dir, "a verl run folder (verl_config.yaml)", force=cfg.force)
    train_files = [str(Path(f).resolve()) for f in cfg.train_files]
    val_files = [str(Path(f).resolve()) for f in cfg.val_files]
    if export and (train_files or val_files):
        validate_rows(train_files + val_files, cfg.data_source_map)
    exports = []
    if not train_files:
        train = out_dir / "data" / f"{cfg.train_split}.parquet"
        exports.append((train, cfg.train_split))
        train_files = [str(train)]
    if not val_files:
        val = out_dir / "data" / f"{cfg.val_split}.parquet"
        exports.append((val, cfg.val_split))
        val_files = [str(val)]
    if exports and export:
        if cfg.env_id not in gymnasium.registry:
            load_persistent_tasks()
        if cfg.env_id not in gymnasium.registry:
            raise VerlBackendError(f"--env {cfg.env_id!r} is not registered (`searchgym envs list`, `searchgym task add`)")
    agent_yaml = out_dir / "agent_loops.yaml"
    overrides = build_overrides(cfg, train_files, val_files, agent_yaml)
    composed = compose_config(overrides)
    validate_composed(composed)
    # everything is checked: build the export rows (the env may build its world/index in the
    # cache), then write; a failing env leaves out_dir untouched
    rows = [(path, split, export_rows(cfg.env_id, split=split, limit=cfg.export_limit, env_kwargs=cfg.env_kwargs))
            for path, split in exports] if export else []
    out_dir.mkdir(parents=True, exist_ok=True)
    for path, split, split_rows in rows:
        write_export_parquet(split_rows, path, cfg.env_id, split)
    write_agent_loops_yaml(cfg, agent_yaml)
    config_file = out_dir / "verl_config.yaml"
    atomic_write_text(config_file, OmegaConf.to_yaml(composed, resolve=False))
    atomic_write_text(out_dir / "verl_overrides.txt", "\n".join(overrides) + "\n")
    env = {}
    if cfg.ray_address:
        env["RAY_ADDRESS"] = cfg.ray_address  # ray.init() inside main_ppo joins this cluster
    command = [sys.executable, "-m", "verl.trainer.main_ppo", f"--config-path={out_dir}",
               "--config-name=verl_config"]
    return LaunchPlan(config_file=config_file, command=command, env=env, overrides=overrides)


def launch(plan: LaunchPlan) -> int:
    """Run ``verl.trainer.main_ppo`` on the plan's config; return its exit status."""
    env = {**os.environ, **plan.env}
    return subprocess.call(plan.command, env=env)
