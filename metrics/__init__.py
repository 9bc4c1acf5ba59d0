"""searchgym.metrics: token entropy, hidden-state effective rank, strategy diversity,
pass@k and the entropy-performance law, on plain arrays and per-episode dict records.

Stands alone: imports no other searchgym package, so it applies to rollouts from any trainer.
See docs/contracts.md ("metrics") for the record fields and each function's conventions.
"""

# Submodules load on first use (PEP 562): `searchgym --help` and `import searchgym.metrics.cli`
# stay free of torch/scipy imports.
_EXPORTS = {
    **dict.fromkeys([
        'MiniLMEmbedder', 'answer_diversity', 'default_embedder', 'distinct_n',
        'miller_madow_entropy', 'normalize_answer', 'normalized_entropy', 'plugin_entropy',
        'query_diversity', 'signature_diversity', 'strategy_coverage', 'strategy_diversity',
        'vendi_from_embeddings', 'vendi_score'
    ], 'diversity'),
    **dict.fromkeys([
        'SEGMENTS', 'batch_token_entropy_stats', 'entropy_from_logits',
        'token_entropy_stats', 'top_entropy_mask', 'top_entropy_threshold'
    ], 'entropy'),
    **dict.fromkeys([
        'mean_pass_at_k', 'pass_at_k'
    ], 'outcome'),
    **dict.fromkeys([
        'effective_rank', 'effective_ranks', 'er_from_singular_values',
        'er_sq_from_singular_values', 'erv_era', 'erv_era_batch', 'group_effective_rank',
        'mean_pool', 'normalized_effective_ranks', 'policy_rows', 'singular_values',
        'spectral_stats', 'windowed_effective_ranks', 'window_counts', 'group_effective_ranks',
        'aligned_effective_rank', 'aligned_effective_ranks', 'residualize_token_identity'
    ], 'rank'),
    **dict.fromkeys([
        'LawFit', 'SpearmanResult', 'fit_entropy_law', 'mean_ci', 'normalize_to_first',
        'spearman_ci'
    ], 'stats'),
    **dict.fromkeys([
        'BootstrapResult', 'CONTRADICTED', 'CorrelationResult', 'EquivalenceResult', 'INCONCLUSIVE',
        'LawBootstrap', 'SUPPORTED', 'Verdict', 'change_correlation', 'equivalence_test',
        'fit_entropy_law_bootstrap', 'hierarchical_bootstrap', 'min_detectable_difference',
        'pair_differences', 'paired_difference', 'repeated_measures_correlation', 'verdict',
        'verdict_rule'
    ], 'stats'),
    **dict.fromkeys([
        'RecordError', 'STRATEGY_KEYS', 'summarize_rollouts'
    ], 'summary'),
    **dict.fromkeys([
        'COLLAPSE_FLOORS', 'COLLAPSE_THRESHOLD', 'collapse_control', 'collapse_floor', 'force_collapse'
    ], 'controls'),
    **dict.fromkeys([
        'STEP_KINDS', 'cluster_steps', 'graph_diameter', 'graph_metrics_from_records',
        'graph_topology', 'num_clusters_for', 'path_cycle', 'path_graph', 'query_graph_metrics',
        'reasoning_graph_metrics', 'reasoning_step_ids', 'step_vectors_from_tokens'
    ], 'graph'),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
