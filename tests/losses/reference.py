"""Slow, independent references for the loss layer: float64 numpy, explicit loops over tokens.

Written from the formulas in DESIGN.md without reusing any jax_irl code, so a shared bug cannot hide.
"""

import math

import numpy as np


def logsumexp(row):
    row = np.asarray(row, np.float64)
    m = np.max(row)
    if m == -np.inf:
        return -np.inf
    return m + math.log(sum(math.exp(x - m) for x in row))


def soft_value(row, tau=1.0):
    return tau * logsumexp(np.asarray(row, np.float64) / tau)


def last_counted(mask_row):
    idx = [t for t, m in enumerate(mask_row) if m != 0]
    return idx[-1] if idx else None


def iqlearn_terms(logits, targets, mask, gamma, tau=1.0):
    """Per-token (nll, reward) dicts keyed by (b, t) for counted tokens."""
    b_, t_, _ = logits.shape
    out = {}
    for b in range(b_):
        last = last_counted(mask[b])
        for t in range(t_):
            if mask[b, t] == 0:
                continue
            q = float(logits[b, t, targets[b, t]])
            v = soft_value(logits[b, t], tau)
            v_next = 0.0 if (t == last or t == t_ - 1) else soft_value(logits[b, t + 1], tau)
            out[(b, t)] = ((v - q) / tau, q - gamma * v_next)
    return out


def iqlearn_loss(logits, targets, mask, gamma, td_weight, tau=1.0):
    terms = iqlearn_terms(logits, targets, mask, gamma, tau)
    total = 0.0
    count = 0.0
    for (b, t), (nll, r) in terms.items():
        total += float(mask[b, t]) * (nll + td_weight * r * r)
        count += float(mask[b, t])
    return total / count if count else 0.0


def mle_entropy_loss(logits, targets, mask, entropy_bonus, tau=1.0):
    """Token mean of -log pi(a_t|s_t) - entropy_bonus * H(pi(.|s_t)), pi = softmax(logits / tau)."""
    total = count = 0.0
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1]):
            if mask[b, t] == 0:
                continue
            row = np.asarray(logits[b, t], np.float64) / tau
            logp = [x - logsumexp(row) for x in row]
            entropy = -sum(math.exp(lp) * lp for lp in logp)
            total += float(mask[b, t]) * (-logp[targets[b, t]] - entropy_bonus * entropy)
            count += float(mask[b, t])
    return total / count if count else 0.0


def value_gap(logits, mask, gamma, tau=1.0):
    b_, t_, _ = logits.shape
    total = count = 0.0
    for b in range(b_):
        last = last_counted(mask[b])
        for t in range(t_):
            if mask[b, t] == 0:
                continue
            v = soft_value(logits[b, t], tau)
            v_next = 0.0 if (t == last or t == t_ - 1) else soft_value(logits[b, t + 1], tau)
            total += float(mask[b, t]) * (v - gamma * v_next)
            count += float(mask[b, t])
    return total / count if count else 0.0


def iqlearn_online_loss(logits, targets, mask, policy_logits, policy_mask, alpha, gamma, td_weight, tau=1.0,
                        chi2="data", policy_targets=None):
    """Literal mixture form: (-E_d[r] + (1-a) E_d[gap] + a E_p[gap]) / tau + lambda E_chi2[r^2], E_chi2 = E_d
    (chi2='data') or (1-a) E_d + a E_p (chi2='mixture', r on the policy's sampled tokens)."""
    terms = iqlearn_terms(logits, targets, mask, gamma, tau)
    count = sum(float(mask[b, t]) for (b, t) in terms)
    mean_r = sum(float(mask[b, t]) * r for (b, t), (_, r) in terms.items()) / count
    mean_r2 = sum(float(mask[b, t]) * r * r for (b, t), (_, r) in terms.items()) / count
    gap_d = value_gap(logits, mask, gamma, tau)
    gap_p = value_gap(policy_logits, policy_mask, gamma, tau)
    if chi2 == "mixture":
        p_terms = iqlearn_terms(policy_logits, policy_targets, policy_mask, gamma, tau)
        p_count = sum(float(policy_mask[b, t]) for (b, t) in p_terms)
        p_r2 = sum(float(policy_mask[b, t]) * r * r for (b, t), (_, r) in p_terms.items()) / p_count
        mean_r2 = (1 - alpha) * mean_r2 + alpha * p_r2
    return (-mean_r + (1 - alpha) * gap_d + alpha * gap_p) / tau + td_weight * mean_r2


def sequence_log_prob(logits_row, targets_row, mask_row, average=False):
    total = 0.0
    n = 0
    for t in range(len(targets_row)):
        if mask_row[t]:
            total += float(logits_row[t, targets_row[t]]) - logsumexp(logits_row[t])
            n += 1
    return total / max(n, 1) if average else total


def log_sigmoid(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def dpo_loss(pc, pr, rc, rr, beta, loss_type, eps=0.0, margin=None):
    losses = []
    margin = [0.0] * len(pc) if margin is None else margin
    for a, b, c, d, m in zip(pc, pr, rc, rr, margin):
        h = beta * ((a - c) - (b - d)) - m
        logits = h / beta
        if loss_type == "sigmoid":
            losses.append(-(1 - eps) * log_sigmoid(h) - eps * log_sigmoid(-h))
        elif loss_type == "robust":
            losses.append((-(1 - eps) * log_sigmoid(h) + eps * log_sigmoid(-h)) / (1 - 2 * eps))
        elif loss_type == "ipo":
            losses.append((logits - 1 / (2 * beta)) ** 2)
        elif loss_type == "hinge":
            losses.append(max(0.0, 1 - h))
    return sum(losses) / len(losses)


def bradley_terry(chosen, rejected, margin=None, weights=None):
    chosen = np.asarray(chosen, np.float64).reshape(len(chosen), -1)
    rejected = np.asarray(rejected, np.float64).reshape(len(rejected), -1)
    w = np.ones_like(chosen) if weights is None else np.broadcast_to(
        np.asarray(weights, np.float64).reshape(len(chosen), -1), chosen.shape)
    per_head = []
    for k in range(chosen.shape[1]):
        num = den = 0.0
        for b in range(chosen.shape[0]):
            m = 0.0 if margin is None else float(margin[b])
            num += w[b, k] * -log_sigmoid(chosen[b, k] - rejected[b, k] - m)
            den += w[b, k]
        per_head.append(num / den)
    return sum(per_head) / len(per_head)


def aggregate(rewards_row, method, coef=0.0):
    r = [float(x) for x in rewards_row]
    k = len(r)
    mean = sum(r) / k
    var = sum((x - mean) ** 2 for x in r) / k
    if method == "mean":
        return mean
    if method == "min":
        return min(r)
    if method == "uwo":
        return mean - coef * var
    return mean - coef * math.sqrt(var)


def gae(rewards, values, mask, gamma, lam, final_values=None):
    b_, t_ = rewards.shape
    adv = np.zeros((b_, t_))
    for b in range(b_):
        counted = [t for t in range(t_) if mask[b, t]]
        next_v = 0.0 if final_values is None else float(final_values[b])
        next_a = 0.0
        for t in reversed(counted):
            delta = rewards[b, t] + gamma * next_v - values[b, t]
            adv[b, t] = delta + gamma * lam * next_a
            next_v, next_a = values[b, t], adv[b, t]
    returns = np.where(mask != 0, adv + values, 0.0)
    return adv, returns


def ppo_policy_loss(logp, old_logp, adv, mask, eps, eps_high=None):
    eps_high = eps if eps_high is None else eps_high
    total = count = 0.0
    for b in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            if mask[b, t]:
                ratio = math.exp(logp[b, t] - old_logp[b, t])
                clipped = min(max(ratio, 1 - eps), 1 + eps_high)
                total += max(-adv[b, t] * ratio, -adv[b, t] * clipped)
                count += 1
    return total / count


def ppo_value_loss(values, old_values, returns, mask, eps):
    total = count = 0.0
    for b in range(values.shape[0]):
        for t in range(values.shape[1]):
            if mask[b, t]:
                v, o, r = values[b, t], old_values[b, t], returns[b, t]
                vc = o + min(max(v - o, -eps), eps)
                total += 0.5 * max((v - r) ** 2, (vc - r) ** 2)
                count += 1
    return total / count


def kl(logp, ref_logp, estimator):
    d = logp - ref_logp
    if estimator == "k1":
        return d
    if estimator == "k2":
        return d * d / 2
    return math.exp(-d) - 1 + d


# --- critic-free group methods ------------------------------------------------------------------------------


def group_advantages(rewards, method, eps=1e-6):
    out = np.zeros(np.shape(rewards))
    for p, row in enumerate(np.asarray(rewards, np.float64)):
        g = len(row)
        mean = sum(row) / g
        std = math.sqrt(sum((x - mean) ** 2 for x in row) / (g - 1))
        for i, x in enumerate(row):
            if method == "grpo":
                out[p, i] = (x - mean) / (std + eps)
            elif method == "dr_grpo":
                out[p, i] = x - mean
            else:
                others = [row[j] for j in range(g) if j != i]
                out[p, i] = x - sum(others) / len(others)
    return out


def reinforce_pp_advantages(token_rewards, logp, ref_logp, mask, kl_coef, estimator, gamma):
    b_, t_ = mask.shape
    returns = np.zeros((b_, t_))
    for b in range(b_):
        running = 0.0
        for t in reversed(range(t_)):
            if mask[b, t] == 0:
                continue
            shaped = float(token_rewards[b, t]) - kl_coef * kl(float(logp[b, t]), float(ref_logp[b, t]), estimator)
            running = shaped + gamma * running
            returns[b, t] = running
    values = [returns[b, t] for b in range(b_) for t in range(t_) if mask[b, t] != 0]
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values) + 1e-8)
    return np.where(mask != 0, (returns - mean) / std, 0.0)


def token_advantages(advantages, mask, terms, credit):
    out = np.zeros(mask.shape)
    for b in range(mask.shape[0]):
        counted = [t for t in range(mask.shape[1]) if mask[b, t] != 0]
        blamed = [t for t in counted if terms is not None and terms[b, t] < 0]
        for t in counted:
            a = float(advantages[b])
            if credit == "add":
                out[b, t] = a + float(terms[b, t])
            elif credit == "blame" and a < 0 and blamed:
                out[b, t] = a * len(counted) / len(blamed) if t in blamed else 0.0
            else:
                out[b, t] = a
    return out


def group_policy_loss(logp, old_logp, adv, mask, clip_low, clip_high, aggregation, ratio, max_tokens=None,
                      ref_logp=None, kl_coef=0.0):
    b_, t_ = mask.shape
    high = clip_low if clip_high is None else clip_high
    per_row, total, count, rows = [], 0.0, 0.0, 0
    for b in range(b_):
        counted = [t for t in range(t_) if mask[b, t] != 0]
        seq = sum(float(logp[b, t]) - float(old_logp[b, t]) for t in counted) / max(len(counted), 1)
        row_sum = 0.0
        for t in counted:
            rho = math.exp(seq) if ratio == "sequence" else math.exp(float(logp[b, t]) - float(old_logp[b, t]))
            a = float(adv[b, t])
            loss = max(-a * rho, -a * min(max(rho, 1 - clip_low), 1 + high))
            if kl_coef:
                loss += kl_coef * kl(float(logp[b, t]), float(ref_logp[b, t]), "k3")
            row_sum += float(mask[b, t]) * loss
        total += row_sum
        count += sum(float(mask[b, t]) for t in counted)
        if counted:
            rows += 1
            per_row.append(row_sum / sum(float(mask[b, t]) for t in counted))
    if aggregation == "token_mean":
        return total / count
    if aggregation == "seq_mean_token_mean":
        return sum(per_row) / rows
    return total / (b_ * (t_ if max_tokens is None else max_tokens))
