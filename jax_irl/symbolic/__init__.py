"""Reinforcement learning from symbolic feedback (Jha et al. 2024, RLSF): tools that return certificates, and
the token-level rewards they become.

A tool checks a response to a prompt and returns a ``Certificate``: whether the whole output is correct, and
the character spans of the response that are wrong, each with a message. ``token_rewards`` turns a
certificate into one reward per response token (the paper's rule):

    r_k = low   if token k's characters overlap a wrong span,
          high  otherwise,
    and the last token gets high only if the whole output is correct (else low).

Token character spans come from ``token_offsets`` (incremental decoding of the sampled ids, so they are exact
for the tokens the sampler produced, whatever the tokenizer). ``batch_token_rewards`` does this for a batch of
sampled responses and returns a [B, N] array aligned with ``sampling.generate``'s tokens (0 after EOS), ready
for ``losses.place_sequence_reward``-style PPO rewards.

Write your own tool as any object with a ``name`` and ``check(prompt, response) -> Certificate``; a tool must
return a certificate for any input (an empty or malformed response is a wrong output with a span and a
message, never an exception that stops training).
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Protocol, Sequence, Tuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class Span:
    start: int  # character offsets into the response, [start, end)
    end: int
    message: str


@dataclasses.dataclass(frozen=True)
class Certificate:
    correct: bool
    spans: Tuple[Span, ...] = ()
    tool: str = ""
    details: Tuple[Tuple[str, str], ...] = ()  # tool-specific facts as (key, value) pairs

    def describe(self) -> str:
        head = f"{self.tool}: {'correct' if self.correct else 'wrong'}"
        return head + "".join(f"\n  [{s.start}:{s.end}] {s.message}" for s in self.spans)


class Tool(Protocol):
    name: str

    def check(self, prompt: str, response: str) -> Certificate:
        ...


def token_offsets(tokenizer, ids: Sequence[int]) -> List[Tuple[int, int]]:
    r"""The character span [start, end) of each token in ``tokenizer.decode(ids)``, by incremental decoding.

    Token k covers the characters that decoding ``ids[:k + 1]`` adds to ``ids[:k]``; special tokens (dropped by
    decode) get an empty span. Exact for the very ids a sampler produced, unlike re-tokenizing the decoded text.

    Args:
        tokenizer: anything with ``decode(ids) -> str``.
        ids: the token ids.

    Returns:
        One ``(start, end)`` per id.

    Examples:
        >>> from jax_irl import symbolic
        >>> class CharTokenizer:  # one character per id
        ...     eos_id, pad_id = 0, 0
        ...     def decode(self, ids):
        ...         return "".join(chr(i) for i in ids if i)
        >>> symbolic.token_offsets(CharTokenizer(), [104, 105, 0])  # "h", "i", then a dropped special token
        [(0, 1), (1, 2), (2, 2)]
    """
    spans, previous = [], 0
    for k in range(len(ids)):
        length = len(tokenizer.decode(list(ids[:k + 1])))
        spans.append((previous, max(length, previous)))
        previous = max(length, previous)
    return spans


def blamed_tokens(certificate: Certificate, offsets: Sequence[Tuple[int, int]]) -> np.ndarray:
    r"""The tokens a certificate blames: those whose characters overlap a span it names as wrong.

    Args:
        certificate: the tool's ``Certificate``.
        offsets: ``[n]`` character spans of the tokens (``token_offsets``); a token with an empty span (a special
            token) is never blamed.

    Returns:
        ``[n]`` bool.

    Examples:
        >>> from jax_irl.symbolic import Certificate, Span, blamed_tokens
        >>> cert = Certificate(False, (Span(2, 4, "a false step"),))
        >>> blamed_tokens(cert, [(0, 2), (2, 3), (3, 5), (5, 5)]).tolist()
        [False, True, True, False]
    """
    return np.array([any(start < span.end and span.start < end for span in certificate.spans)
                     for start, end in offsets], bool).reshape(len(offsets))


def token_rewards(certificate: Certificate, offsets: Sequence[Tuple[int, int]], *, low: float = 0.0,
                  high: float = 1.0) -> np.ndarray:
    r"""One reward per token from a certificate: the paper's rule.

        r_k = low if token k overlaps a wrong span, else high;  the last token: high only if the output is correct

    (low, high) = (0, 1) is the paper's; (-1, 1) centres the rewards.

    Args:
        certificate: the tool's ``Certificate``.
        offsets: ``[n]`` character spans of the tokens (``token_offsets``).
        low: the reward of a blamed token.
        high: the reward of any other token.

    Returns:
        ``[n]`` float32 (empty for no tokens).

    Examples:
        >>> from jax_irl.symbolic import Certificate, Span, token_rewards
        >>> cert = Certificate(False, (Span(2, 3, "a digit"),))
        >>> token_rewards(cert, [(0, 2), (2, 3), (3, 4)]).tolist()
        [1.0, 0.0, 0.0]

    References:
        Jha et al. 2024, "RLSF: Reinforcement Learning via Symbolic Feedback".
    """
    n = len(offsets)
    if n == 0:
        return np.zeros(0, np.float32)
    rewards = np.where(blamed_tokens(certificate, offsets), low, high).astype(np.float32)
    rewards[-1] = high if certificate.correct else low
    return rewards


def batch_token_rewards(tool: Tool, prompts: Sequence[str], response_ids: np.ndarray, response_mask: np.ndarray,
                        tokenizer, *, low: float = 0.0, high: float = 1.0
                        ) -> Tuple[np.ndarray, List[Certificate]]:
    r"""Token rewards for a batch of sampled responses, aligned with ``sampling.generate``'s tokens.

    Each response is decoded from its own ids, checked, and its certificate spread over its tokens
    (``token_rewards``); positions after its end get 0.

    Args:
        tool: a symbolic tool (``check(prompt, response) -> Certificate``).
        prompts: ``[B]`` prompt texts.
        response_ids: ``[B, N]`` sampled ids.
        response_mask: ``[B, N]``, 1 on generated tokens (EOS included).
        tokenizer: with ``decode``.
        low: the reward of a blamed token.
        high: the reward of any other token.

    Returns:
        ``(rewards, certificates)``: ``[B, N]`` float32 and the B certificates.

    Examples:
        >>> from jax_irl import symbolic
        >>> from jax_irl.symbolic.arithmetic import ArithmeticTool
        >>> tool = ArithmeticTool({"What is 1+2?": "1+2=<<1+2=3>>3\\n#### 3"})  # prompt -> reference solution
        >>> class CharTokenizer:  # one character per id
        ...     eos_id, pad_id = 0, 0
        ...     def decode(self, ids):
        ...         return "".join(chr(i) for i in ids if i)
        >>> text = "1+2=<<1+2=4>>4\n#### 4"
        >>> ids = [[ord(c) for c in text]]
        >>> rewards, certs = symbolic.batch_token_rewards(tool, ["What is 1+2?"], ids, [[1] * len(text)],
        ...                                               CharTokenizer())
        >>> certs[0].correct, rewards.shape, float(rewards[0, 0])
        (False, (1, 21), 1.0)
    """
    response_ids, response_mask = np.asarray(response_ids), np.asarray(response_mask)
    if response_ids.shape != response_mask.shape or response_ids.ndim != 2:
        raise ValueError(f"response_ids and response_mask must both be [B, N]; got {response_ids.shape} and "
                         f"{response_mask.shape}")
    if len(prompts) != len(response_ids):
        raise ValueError(f"{len(prompts)} prompts for {len(response_ids)} responses")
    rewards = np.zeros(response_ids.shape, np.float32)
    certificates = []
    for b, (prompt, ids, mask) in enumerate(zip(prompts, response_ids, response_mask)):
        count = int((mask > 0).sum())
        kept = [int(i) for i in ids[:count]]
        text = tokenizer.decode(kept)
        certificate = safe_check(tool, prompt, text)
        certificates.append(certificate)
        rewards[b, :count] = token_rewards(certificate, token_offsets(tokenizer, kept), low=low, high=high)
    return rewards, certificates


@dataclasses.dataclass(frozen=True)
class RewardSpec:
    """How certificates become PPO rewards (``reward_fn``).

    kind 'token' (RLSF): ``token_rewards`` with (low, high), plus ``bonus`` on the last token when the whole
    output is correct. (low, high, bonus) = (0, 1, 0) is the paper's rule as stated; the default (-0.2, 0, 1)
    is the scalar reward plus a penalty on each token inside a wrong span, so a correct output earns what the
    scalar reward pays and the two kinds differ only in where a wrong output's blame lands.
    kind 'scalar': ``bonus`` if the output is correct, else 0, one number per response (on its last token).

    normalise (token kind): 'none' gives every token its (low or high) value, so a response's summed token reward
    grows with its length (with the default, a wrong response of 30 tokens, 15 of them blamed, sums to -3 against
    the scalar kind's 0); 'mean' divides each response's token rewards by its token count, so their sum is the
    response's mean token reward, in [low, high] whatever its length: the token and scalar kinds then pay on one
    scale (the outcome ``bonus`` is not divided), and a fixed KL coefficient weighs the same in both."""

    kind: str = "token"
    low: float = -0.2
    high: float = 0.0
    bonus: float = 1.0
    normalise: str = "none"  # 'none' | 'mean' (token kind): see above

    def __post_init__(self):
        if self.kind not in ("token", "scalar"):
            raise ValueError(f"RewardSpec.kind must be 'token' or 'scalar'; got {self.kind!r}")
        for name in ("low", "high", "bonus"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and np.isfinite(value)):
                raise ValueError(f"RewardSpec.{name} must be a finite number; got {value!r}")
        if self.normalise not in ("none", "mean"):
            raise ValueError(f"RewardSpec.normalise must be 'none' or 'mean'; got {self.normalise!r}")


def reward_fn(tool: Tool, tokenizer, spec: RewardSpec = RewardSpec(), *, workers: Optional[int] = None):
    r"""A PPO reward function from a tool (``algorithms.ppo.RewardFn``).

    It decodes each response from its ids, checks it (in parallel with the tool's ``check_many`` when it has one),
    and returns token rewards or scalars as ``spec`` says.

    Args:
        tool: a symbolic tool.
        tokenizer: with ``decode``.
        spec: a ``RewardSpec``: 'token' (per-token rewards plus the outcome bonus) or 'scalar'.
        workers: parallel checks for tools with ``check_many``.

    Returns:
        ``fn(prompts, response_ids, response_mask) -> (rewards, stats)``: rewards ``[N, R]`` or ``[N]``; stats per
        response: 'correct', 'wrong_token_fraction' and every numeric detail of the certificates (0 where absent).

    Examples:
        >>> from jax_irl import symbolic
        >>> from jax_irl.symbolic.arithmetic import ArithmeticTool
        >>> tool = ArithmeticTool({"What is 1+2?": "1+2=<<1+2=3>>3\\n#### 3"})  # prompt -> reference solution
        >>> class CharTokenizer:  # one character per id
        ...     eos_id, pad_id = 0, 0
        ...     def decode(self, ids):
        ...         return "".join(chr(i) for i in ids if i)
        >>> fn = symbolic.reward_fn(tool, CharTokenizer(), symbolic.RewardSpec("scalar"))
        >>> text = "#### 3"
        >>> rewards, stats = fn(["What is 1+2?"], [[ord(c) for c in text]], [[1] * len(text)])
        >>> rewards.tolist(), stats["correct"].tolist()
        ([1.0], [1.0])
    """

    def fn(prompts: Sequence[str], response_ids: np.ndarray, response_mask: np.ndarray):
        kept, certificates, offsets, stats = _judge(tool, tokenizer, prompts, response_ids, response_mask, workers)
        correct = stats["correct"]
        if spec.kind == "scalar":
            return correct * spec.bonus, stats
        rewards = np.zeros(np.shape(response_ids), np.float32)
        for b, (ids, cert, offs) in enumerate(zip(kept, certificates, offsets)):
            if ids:
                rewards[b, :len(ids)] = token_rewards(cert, offs, low=spec.low, high=spec.high)
                if spec.normalise == "mean":
                    rewards[b, :len(ids)] /= len(ids)
                rewards[b, len(ids) - 1] += spec.bonus * cert.correct
        return rewards, stats

    return fn


def group_reward_fn(tool: Tool, tokenizer, *, penalty: float = -0.2, bonus: float = 1.0,
                    workers: Optional[int] = None):
    r"""A reward function for the critic-free group methods (``algorithms.grpo.GroupRewardFn``).

    Each response gets its outcome ``bonus * correct`` and the certificate's per-token terms: ``penalty`` (< 0) on
    every token that overlaps a span the tool blames, 0 elsewhere. ``losses.token_advantages`` turns them into
    token-level credit ('add' or 'blame').

    Args:
        tool: a symbolic tool.
        tokenizer: with ``decode``.
        penalty: the term on a blamed token, a finite number < 0.
        bonus: the outcome of a correct response, > 0.
        workers: parallel checks for tools with ``check_many``.

    Returns:
        ``fn(prompts, response_ids, response_mask) -> (outcomes [N], terms [N, R], stats)``, stats as
        ``reward_fn``'s.

    Examples:
        >>> from jax_irl import symbolic
        >>> from jax_irl.symbolic.arithmetic import ArithmeticTool
        >>> tool = ArithmeticTool({"What is 1+2?": "1+2=<<1+2=3>>3\\n#### 3"})  # prompt -> reference solution
        >>> class CharTokenizer:  # one character per id
        ...     eos_id, pad_id = 0, 0
        ...     def decode(self, ids):
        ...         return "".join(chr(i) for i in ids if i)
        >>> fn = symbolic.group_reward_fn(tool, CharTokenizer())
        >>> text = "1+2=<<1+2=4>>4\n#### 4"
        >>> outcomes, terms, stats = fn(["What is 1+2?"], [[ord(c) for c in text]], [[1] * len(text)])
        >>> outcomes.tolist(), round(float(terms.min()), 4)
        ([0.0], -0.2)
    """
    if not (isinstance(penalty, (int, float)) and np.isfinite(penalty) and penalty < 0):
        raise ValueError(f"group_reward_fn's penalty must be a finite number < 0 (it marks the blamed tokens); "
                         f"got {penalty!r}")
    if not (isinstance(bonus, (int, float)) and np.isfinite(bonus) and bonus > 0):
        raise ValueError(f"group_reward_fn's bonus must be a finite number > 0; got {bonus!r}")

    def fn(prompts: Sequence[str], response_ids: np.ndarray, response_mask: np.ndarray):
        kept, certificates, offsets, stats = _judge(tool, tokenizer, prompts, response_ids, response_mask, workers)
        terms = np.zeros(np.shape(response_ids), np.float32)
        for b, (ids, cert, offs) in enumerate(zip(kept, certificates, offsets)):
            terms[b, :len(ids)] = np.where(blamed_tokens(cert, offs), penalty, 0.0)
        return stats["correct"] * bonus, terms, stats

    return fn


def _judge(tool: Tool, tokenizer, prompts: Sequence[str], response_ids, response_mask, workers):
    """Decode and check every response: (ids per response, certificates, token offsets, per-response stats)."""
    response_ids, response_mask = np.asarray(response_ids), np.asarray(response_mask)
    if response_ids.shape != response_mask.shape or response_ids.ndim != 2 or len(prompts) != len(response_ids):
        raise ValueError(f"reward_fn takes [N] prompts with [N, R] ids and mask; got {len(prompts)}, "
                         f"{response_ids.shape}, {response_mask.shape}")
    kept = [[int(i) for i in ids[:int((m > 0).sum())]] for ids, m in zip(response_ids, response_mask)]
    texts = [tokenizer.decode(k) for k in kept]
    certificates = check_all(tool, prompts, texts, workers=workers)
    offsets = [token_offsets(tokenizer, ids) for ids in kept]
    correct = np.array([c.correct for c in certificates], np.float32)
    wrong = np.zeros(len(kept), np.float32)
    for b, (ids, cert, offs) in enumerate(zip(kept, certificates, offsets)):
        if ids:
            base = token_rewards(cert, offs, low=0.0, high=1.0)
            wrong[b] = float((base[:-1] == 0).mean()) if len(ids) > 1 else float(not cert.correct)
    stats = {"correct": correct, "wrong_token_fraction": wrong}
    numeric = {}
    for b, cert in enumerate(certificates):
        for key, value in cert.details:
            try:
                numeric.setdefault(key, np.zeros(len(kept), np.float32))[b] = float(value)
            except ValueError:
                continue
    stats.update(numeric)
    return kept, certificates, offsets, stats


def safe_check(tool: Tool, prompt: str, response: str) -> Certificate:
    r"""``tool.check``, with any exception turned into a wrong-output certificate that names it.

    A tool's bug, or an input it cannot handle, must not stop a training run.

    Args:
        tool: a symbolic tool.
        prompt: the prompt text.
        response: the response text.

    Returns:
        The tool's ``Certificate``, or a wrong one whose span covers the response and names the exception.

    Raises:
        TypeError: when the tool returns something other than a ``Certificate``.

    Examples:
        >>> from jax_irl import symbolic
        >>> class Broken:
        ...     name = "broken"
        ...     def check(self, prompt, response):
        ...         raise RuntimeError("boom")
        >>> cert = symbolic.safe_check(Broken(), "", "abc")
        >>> cert.correct, cert.spans[0].message
        (False, 'the broken tool failed: RuntimeError: boom')
    """
    try:
        certificate = tool.check(prompt, response)
    except Exception as err:  # noqa: BLE001 - the certificate records it
        return Certificate(False, (Span(0, len(response), f"the {getattr(tool, 'name', 'tool')} tool failed: "
                                                         f"{type(err).__name__}: {err}"),), getattr(tool, "name", ""))
    if not isinstance(certificate, Certificate):
        raise TypeError(f"tool {getattr(tool, 'name', tool)!r} returned {type(certificate).__name__}, not a Certificate")
    return certificate


def check_all(tool: Tool, prompts: Sequence[str], responses: Sequence[str], *,
              workers: Optional[int] = None) -> List[Certificate]:
    r"""Certificates of every (prompt, response) pair.

    The tool's own parallel ``check_many`` when it has one (the sandboxed program tools), else ``safe_check`` one by
    one.

    Args:
        tool: a symbolic tool.
        prompts: the prompt texts.
        responses: the response texts, one per prompt.
        workers: parallel checks for tools with ``check_many``.

    Returns:
        One ``Certificate`` per pair.

    Examples:
        >>> from jax_irl import symbolic
        >>> from jax_irl.symbolic.arithmetic import ArithmeticTool
        >>> tool = ArithmeticTool({"What is 1+2?": "1+2=<<1+2=3>>3\\n#### 3"})  # prompt -> reference solution
        >>> [c.correct for c in symbolic.check_all(tool, ["What is 1+2?"] * 2, ["#### 3", "#### 4"])]
        [True, False]
    """
    if hasattr(tool, "check_many"):
        return list(tool.check_many(list(prompts), list(responses), workers=workers))
    return [safe_check(tool, p, t) for p, t in zip(prompts, responses)]


__all__ = ["Certificate", "RewardSpec", "Span", "Tool", "batch_token_rewards", "blamed_tokens", "check_all",
           "group_reward_fn", "reward_fn", "safe_check", "token_offsets", "token_rewards"]
