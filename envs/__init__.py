"""searchgym.envs: Gymnasium search environments, the synthetic world, the task registry
and strategy signatures. Importing this package registers the ``searchgym/...`` ids."""

from searchgym.envs.env import EnvConfig, ResetInfo, SearchEnv, StepInfo, UnicodeText, step_batch
from searchgym.envs.protocol import (
    CORRECTIVE,
    EXTERNAL_PROMPT,
    PROMPT,
    STOP_TAGS,
    TAGS,
    Action,
    format_docs,
    parse_action,
    tagged,
)
from searchgym.envs.registry import (
    FAMILY_ENV,
    TASKS,
    family_env_id,
    list_envs,
    load_qa,
    make,
    make_batch,
    register_task,
)
from searchgym.envs.reward import em_score, f1_score, normalize_answer
from searchgym.envs.signature import match_strategy, search_role, trajectory_signature
from searchgym.envs.strategies import (
    OracleResult,
    format_table,
    oracle_answer,
    oracle_queries,
    oracle_query,
    oracle_table,
    run_oracle,
    run_oracle_batch,
    valid_strategies,
)
from searchgym.envs.tasks import FAMILIES, ROLES, SPLITS, Question, Step, Strategy, read_questions
from searchgym.envs.world import (
    GENERATOR_VERSION,
    World,
    WorldConfig,
    ensure_index,
    ensure_world,
    entity_of_doc,
    generate_world,
    load_questions,
    load_world,
    write_world,
)

__all__ = [
    "Action", "CORRECTIVE", "EXTERNAL_PROMPT", "EnvConfig", "FAMILIES", "FAMILY_ENV", "GENERATOR_VERSION",
    "OracleResult", "PROMPT", "Question", "ROLES", "ResetInfo", "SPLITS", "STOP_TAGS", "SearchEnv", "Step",
    "StepInfo", "Strategy", "TAGS", "TASKS", "UnicodeText", "World", "WorldConfig", "em_score",
    "ensure_index", "ensure_world", "entity_of_doc", "f1_score", "family_env_id", "format_docs",
    "format_table", "generate_world", "list_envs", "load_qa", "load_questions", "load_world", "make",
    "make_batch", "match_strategy", "normalize_answer", "oracle_answer", "oracle_queries", "oracle_query",
    "oracle_table", "parse_action", "read_questions", "register_task", "run_oracle", "run_oracle_batch",
    "search_role", "step_batch", "tagged", "trajectory_signature", "valid_strategies", "write_world",
]
