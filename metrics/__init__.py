"""searchgym.metrics: token entropy, hidden-state effective rank, strategy diversity,
pass@k and the entropy-performance law, on plain arrays and per-episode dict records.

Stands alone: imports no other searchgym package, so it applies to rollouts from any trainer.
See docs/contracts.md ("metrics") for the record fields and each function's conventions.
"""

from .diversity import (
    MiniLMEmbedder,
    answer_diversity,
    default_embedder,
    distinct_n,
    miller_madow_entropy,
    normalize_answer,
    normalized_entropy,
    plugin_entropy,
    query_diversity,
    signature_diversity,
    strategy_coverage,
    vendi_from_embeddings,
    vendi_score,
)
from .entropy import SEGMENTS, batch_token_entropy_stats, entropy_from_logits, token_entropy_stats
from .outcome import mean_pass_at_k, pass_at_k
from .rank import (
    effective_rank,
    effective_ranks,
    er_from_singular_values,
    er_sq_from_singular_values,
    erv_era,
    erv_era_batch,
    group_effective_rank,
    mean_pool,
    normalized_effective_ranks,
    policy_rows,
    singular_values,
    spectral_stats,
    windowed_effective_ranks,
)
from .stats import LawFit, SpearmanResult, fit_entropy_law, mean_ci, normalize_to_first, spearman_ci
from .summary import RecordError, summarize_rollouts

__all__ = [
    "MiniLMEmbedder", "answer_diversity", "default_embedder", "distinct_n", "miller_madow_entropy",
    "normalize_answer", "normalized_entropy", "plugin_entropy", "query_diversity",
    "signature_diversity", "strategy_coverage", "vendi_from_embeddings", "vendi_score",
    "SEGMENTS", "batch_token_entropy_stats", "entropy_from_logits", "token_entropy_stats",
    "mean_pass_at_k", "pass_at_k",
    "effective_rank", "effective_ranks", "er_from_singular_values", "er_sq_from_singular_values",
    "erv_era", "erv_era_batch", "group_effective_rank", "mean_pool", "normalized_effective_ranks",
    "policy_rows", "singular_values", "spectral_stats", "windowed_effective_ranks",
    "LawFit", "SpearmanResult", "fit_entropy_law", "mean_ci", "normalize_to_first", "spearman_ci",
    "RecordError", "summarize_rollouts",
]
