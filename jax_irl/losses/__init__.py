"""jax_irl.losses: pure loss functions on arrays (no models, no Flax/Orbax/TFDS imports).

Every loss returns ``(loss, aux)``; plain transforms return arrays. Shapes, reductions and formulas are in each
function's docstring and in DESIGN.md ("The methods, precisely").
"""

from jax_irl.losses._common import constrain_rows, masked_mean, masked_sum, masked_whiten
from jax_irl.losses.ensemble import AGGREGATIONS, aggregate_rewards, bootstrap_weights, head_disagreement
from jax_irl.losses.group import (
    AGGREGATIONS as GROUP_AGGREGATIONS,
    CREDITS,
    GROUP_ADVANTAGES,
    RATIOS,
    degenerate_groups,
    group_advantages,
    group_policy_loss,
    reinforce_pp_advantages,
    token_advantages,
)
from jax_irl.losses.imitation import (
    CHI2_SUPPORTS,
    iqlearn_loss,
    iqlearn_loss_from_q,
    iqlearn_online_loss,
    iqlearn_online_loss_from_q,
    mle_entropy_loss,
    mle_entropy_loss_from_q,
    mle_loss,
    mle_loss_from_q,
    value_gap,
)
from jax_irl.losses.policy_gradient import (
    KL_ESTIMATORS,
    gae,
    kl_penalty,
    kl_shaped_rewards,
    place_sequence_reward,
    ppo_policy_loss,
    ppo_value_loss,
)
from jax_irl.losses.preference import DPO_LOSS_TYPES, bradley_terry_loss, dpo_loss, sequence_log_probs
from jax_irl.losses.soft_q import (
    chunked_soft_q_stats,
    implied_rewards,
    implied_rewards_from_q,
    next_state_values,
    soft_q_stats,
    soft_values,
    terminal_mask,
    token_entropies,
    token_log_probs,
)

__all__ = [
    "CHI2_SUPPORTS",
    "AGGREGATIONS",
    "CREDITS",
    "DPO_LOSS_TYPES",
    "GROUP_ADVANTAGES",
    "GROUP_AGGREGATIONS",
    "RATIOS",
    "KL_ESTIMATORS",
    "aggregate_rewards",
    "bootstrap_weights",
    "bradley_terry_loss",
    "constrain_rows",
    "chunked_soft_q_stats",
    "degenerate_groups",
    "dpo_loss",
    "gae",
    "group_advantages",
    "group_policy_loss",
    "head_disagreement",
    "implied_rewards",
    "implied_rewards_from_q",
    "iqlearn_loss",
    "iqlearn_loss_from_q",
    "iqlearn_online_loss",
    "iqlearn_online_loss_from_q",
    "kl_penalty",
    "kl_shaped_rewards",
    "masked_mean",
    "masked_sum",
    "masked_whiten",
    "mle_entropy_loss",
    "mle_entropy_loss_from_q",
    "mle_loss",
    "mle_loss_from_q",
    "next_state_values",
    "place_sequence_reward",
    "ppo_policy_loss",
    "ppo_value_loss",
    "reinforce_pp_advantages",
    "sequence_log_probs",
    "soft_q_stats",
    "soft_values",
    "terminal_mask",
    "token_advantages",
    "token_entropies",
    "token_log_probs",
    "value_gap",
]
