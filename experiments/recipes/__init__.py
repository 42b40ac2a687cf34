"""Recipes: each paper's config dataclass, its checks, its run (set-up through ``experiments.lm_base.prepare``,
the sweep, the tables and the plots). The modules of ``experiments/configs`` only declare over them: variants,
sizes, resumable keys and the reasons for their numbers."""
