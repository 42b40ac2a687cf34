import json

import numpy as np
import pytest

from jax_irl import metrics, tasks
from jax_irl.data import arithmetic, batching, game24, jsonl, tokenizer


def test_solution_variants_hand_checked_and_diversified_answers_stay_true():
    problem = {"question": "q", "final": 45, "steps": [("11 * 3", 33), ("2 * 6", 12), ("33 + 12", 45)]}
    variants = arithmetic.solution_variants(problem)
    # 2 step orders x 2 x 2 operand orders of the products x 2 of the sum; the canonical text first.
    assert len(variants) == 16 and variants[0] == "11 * 3 = 33\n2 * 6 = 12\n33 + 12 = 45\n#### 45"
    assert "6 * 2 = 12\n3 * 11 = 33\n12 + 33 = 45\n#### 45" in variants
    assert all(arithmetic.verify(dict(problem, answer=v)) for v in variants)
    # A step that uses the one before it stays after it; subtraction and division keep their operand order.
    chained = {"question": "q", "final": 21, "steps": [("4 * 6", 24), ("24 - 3", 21)]}
    assert arithmetic.solution_variants(chained) == ["4 * 6 = 24\n24 - 3 = 21\n#### 21",
                                                     "6 * 4 = 24\n24 - 3 = 21\n#### 21"]
    train, _ = arithmetic.make_splits(seed=0, num_train=300, num_test=0)
    diverse = arithmetic.diversify(train, seed=1)
    assert diverse == arithmetic.diversify(train, seed=1) and all(arithmetic.verify(p) for p in diverse)
    assert [p["final"] for p in diverse] == [p["final"] for p in train]
    assert 0.4 < np.mean([a["answer"] != b["answer"] for a, b in zip(diverse, train)]) < 0.9


def test_expert_samples_are_the_diverse_experts_solutions():
    from jax_irl import tasks

    hand = {"question": "q", "final": 45, "steps": [("11 * 3", 33), ("2 * 6", 12), ("33 + 12", 45)]}
    chained = {"question": "q", "final": 3, "steps": [("9 - 3", 6), ("6 / 2", 3)]}  # one text only
    samples = arithmetic.expert_samples([hand, chained], 50, seed=0)
    assert samples == arithmetic.expert_samples([hand, chained], 50, seed=0)
    assert set(samples[0]) <= set(arithmetic.solution_variants(hand)) and len(set(samples[0])) > 8  # of 16
    assert samples[1] == ["9 - 3 = 6\n6 / 2 = 3\n#### 3"] * 50 and metrics.self_bleu(samples[1:]) == 100.0
    # Four draws (the evaluation's num_samples) of a problem with 16 texts differ: Self-BLEU below 100.
    assert metrics.self_bleu(arithmetic.expert_samples([hand], 4, seed=0)) < 100.0
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        arithmetic.expert_samples([hand], 0, seed=0)
    # The task's problems are the ones load() formats, diversified as its training responses are.
    cfg = tasks.TaskConfig(train_examples=30, eval_examples=5, diverse_solutions=True)
    train, test = tasks.arithmetic_problems(cfg)
    data = tasks.load(cfg)
    assert [" " + p["answer"] for p in train] == data.train_responses and [p["answer"] for p in test] == \
        data.eval_references
    with pytest.raises(ValueError, match="needs task 'arithmetic'"):
        tasks.arithmetic_problems(tasks.TaskConfig(name="gsm8k"))


def _true_line(line: str) -> bool:
    expr, value = line.split("=")
    a, op, b = expr.split()
    return {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b), "/": int(a) / int(b)}[op] == int(value)


def test_fresh_chains_keep_the_training_set_and_drop_held_out_repeats_of_its_chains():
    train, test = arithmetic.make_splits(seed=0, num_train=2000, num_test=48, max_number=12)
    chains = {arithmetic.calculation_chain(p) for p in train}
    shared = [p for p in test if arithmetic.calculation_chain(p) in chains]
    assert len(shared) == 15  # 31% of the default held-out set repeats a training chain under other names
    fresh_train, fresh = arithmetic.make_splits(seed=0, num_train=2000, num_test=48, max_number=12, fresh_chains=True)
    assert fresh_train == train and len(fresh) == 48
    assert not any(arithmetic.calculation_chain(p) in chains for p in fresh)
    assert not {p["question"] for p in fresh} & {p["question"] for p in train}
    kept = [p for p in test if p not in shared]  # the problems that had no shared chain stay, in order
    assert fresh[:len(kept)] == kept
    assert arithmetic.calculation_chain({"steps": [("3 + 9", 12), ("12 * 2", 24)]}) == ("3 + 9", "12 * 2")
    data = tasks.load(tasks.TaskConfig(train_examples=2000, eval_examples=48, max_number=12, fresh_chains=True))
    assert data.eval_references == [p["answer"] for p in fresh]


def test_wrong_solutions_have_one_false_line_and_a_wrong_answer():
    from jax_irl import metrics

    train, _ = arithmetic.make_splits(seed=0, num_train=200, num_test=0)
    for k, problem in enumerate(train):
        wrong = arithmetic.wrong_solution(problem, seed=k)
        assert wrong == arithmetic.wrong_solution(problem, seed=k)
        lines = wrong.split("\n")
        false = [line for line in lines[:-1] if not _true_line(line)]
        assert len(false) == 1 and len(lines) == len(problem["answer"].split("\n"))
        assert not metrics.answers_match(wrong, problem["answer"]) and lines[-1].startswith("#### ")
    hand = {"question": "q", "final": 45, "steps": [("6 * 2", 12), ("3 * 11", 33), ("12 + 33", 45)]}
    texts = {arithmetic.wrong_solution(hand, seed=s) for s in range(40)}
    assert "6 * 2 = 14\n3 * 11 = 33\n14 + 33 = 47\n#### 47" in texts  # a slip in step 1 carried on


def test_arithmetic_problems_are_deterministic_correct_and_split_cleanly():
    train, test = arithmetic.make_splits(seed=3, num_train=500, num_test=100)
    again, _ = arithmetic.make_splits(seed=3, num_train=500, num_test=100)
    assert train == again and len(train) == 500 and len(test) == 100
    assert arithmetic.make_splits(seed=4, num_train=50, num_test=0)[0] != train[:50]
    assert not {p["question"] for p in train} & {p["question"] for p in test}
    assert all(arithmetic.verify(p) for p in train + test)
    # GSM8K's format: the metrics read the final answer the same way as from GSM8K.
    assert all(metrics.extract_answer(p["answer"]) == str(p["final"]) for p in train)
    steps = {p["answer"].count("\n") for p in train}
    assert steps == {1, 2, 3}  # one- to three-step problems
    broken = dict(train[0], answer=train[0]["answer"].replace(" = ", " = 1", 1))
    assert not arithmetic.verify(broken)


def test_calculation_corpus_holds_true_single_calculations_only():
    rows = arithmetic.calculation_corpus(seed=0, num_rows=300, per_row=5, max_number=12)
    assert rows == arithmetic.calculation_corpus(seed=0, num_rows=300, per_row=5, max_number=12)
    assert len(rows) == 300 and all(row.count("\n") == 4 for row in rows)
    lines = [line for row in rows for line in row.split("\n")]
    for line in lines:
        expr, value = line.split(" = ")
        a, op, b = expr.split()
        assert max(int(a), int(b)) <= 12 * 7 * 5 and op in "+-*/"  # the largest operand: 5 weeks of 7 days at $12
        assert {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b), "/": int(a) / int(b)}[op] \
            == int(value), line
    assert {line.split()[1] for line in lines} == set("+-*/")
    # No final-answer lines and no question text: pretraining on it never shows how a problem is solved.
    assert not any("####" in row or "?" in row for row in rows)
    with pytest.raises(ValueError, match="per_row"):
        arithmetic.calculation_corpus(seed=0, num_rows=3, per_row=0)


def test_game_of_24_count_solutions_and_checker():
    puzzles = game24.all_puzzles()
    assert len(puzzles) == 1362  # of the 1820 multisets of four numbers from 1..13
    assert all(game24.check_expression(solution, combo)[0] for combo, solution in puzzles)
    assert game24.solve([1, 1, 1, 1]) is None and game24.solve([3, 3, 8, 8]) is not None
    assert game24.check_expression("8 / (3 - 8 / 3) = 24", [3, 3, 8, 8]) == (True, "correct")
    assert game24.check_expression("(4 + 6) * 2", [2, 4, 6, 8])[1] == "uses [2, 4, 6] instead of [2, 4, 6, 8]"
    assert "not 24" in game24.check_expression("2 + 4 + 6 + 8", [2, 4, 6, 8])[1]
    assert game24.check_expression("8 / (4 - 4) + 6 * 2", [2, 4, 4, 8]) == (False, "division by zero")
    assert not game24.check_expression("__import__('os')", [1, 2, 3, 4])[0]
    assert not game24.check_expression("4 ** 2 + 8", [2, 4, 8, 1])[0]


def test_jsonl_reads_records_and_names_the_bad_line(tmp_path):
    good = tmp_path / "sft.jsonl"
    jsonl.write_jsonl(str(good), [{"prompt": "2+2=", "response": "4", "extra": 1}, {"prompt": "a", "response": "b"}])
    assert jsonl.read_jsonl(str(good)) == [{"prompt": "2+2=", "response": "4"}, {"prompt": "a", "response": "b"}]
    cases = {
        '{"prompt": "x", "response": "y"}\n{"prompt": "x", "response": \n': r"bad\.jsonl:2: invalid JSON",
        '{"prompt": "x"}\n': r"bad\.jsonl:1: missing field 'response'",
        '\n\n{"prompt": 3, "response": "y"}\n': r"bad\.jsonl:3: field 'prompt' must be a string, got int",
        '[1, 2]\n': r"bad\.jsonl:1: expected a JSON object",
        '\n': r"bad\.jsonl: no records",
    }
    bad = tmp_path / "bad.jsonl"
    for content, message in cases.items():
        bad.write_text(content)
        with pytest.raises(ValueError, match=message):
            jsonl.read_jsonl(str(bad))
    pref = tmp_path / "pref.jsonl"
    pref.write_text(json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"}) + "\n")
    assert jsonl.read_jsonl(str(pref), kind="preference")[0]["chosen"] == "c"
    with pytest.raises(ValueError, match="missing field 'chosen'"):
        jsonl.read_jsonl(str(good), kind="preference")
    with pytest.raises(FileNotFoundError, match="no such JSONL file"):
        jsonl.read_jsonl(str(tmp_path / "missing.jsonl"))


@pytest.fixture(scope="module")
def bpe():
    train, _ = arithmetic.make_splits(seed=0, num_train=300, num_test=0)
    return tokenizer.train_bpe([p["question"] + "\n" + p["answer"] for p in train], vocab_size=300), train


def test_bpe_round_trips_is_deterministic_and_saves(bpe, tmp_path):
    tok, train = bpe
    assert (tok.pad_id, tok.eos_id, tok.bos_id) == (0, 1, 2)
    for p in train[:50]:
        assert tok.decode(tok.encode(p["answer"])) == p["answer"]
    again = tokenizer.train_bpe([p["question"] + "\n" + p["answer"] for p in train], vocab_size=300)
    assert again.encode(train[0]["question"]) == tok.encode(train[0]["question"])
    tok.save(str(tmp_path / "tok"))
    loaded = tokenizer.TextTokenizer.load(str(tmp_path / "tok"))
    assert loaded.encode(train[1]["answer"]) == tok.encode(train[1]["answer"]) and loaded.eos_id == tok.eos_id
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        tokenizer.TextTokenizer.load(str(tmp_path))


def test_encode_examples_masks_exactly_the_response_and_eos(bpe):
    tok, train = bpe
    enc = batching.encode_examples(tok, [p["question"] for p in train[:20]], [p["answer"] for p in train[:20]], 160)
    tokens, mask = enc["tokens"], enc["mask"]
    for i in range(20):
        targets = tokens[i, 1:]
        counted = targets[mask[i] > 0]
        assert counted[-1] == tok.eos_id
        assert tok.decode(counted) == train[i]["answer"]
        assert tokens[i, 0] == tok.bos_id and tok.decode(tokens[i, 1:enc["prompt_lengths"][i]]) == train[i]["question"]
    # Too long: the prompt is clipped from the left, the response kept; then the response itself.
    short = batching.encode_examples(tok, ["a very long prompt " * 20], ["12 + 3 = 15"], 18)
    assert tok.decode(short["tokens"][0, 1:][short["mask"][0] > 0]) == "12 + 3 = 15" and short["truncated"] == 0
    assert short["tokens"][0, 0] == tok.bos_id and short["prompt_lengths"][0] > 1
    cut = batching.encode_examples(tok, ["q"], ["1 2 3 4 5 6 7 8 9 10 11 12"], 6)
    assert cut["truncated"] == 1 and cut["mask"][0].sum() == 5
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        batching.encode_examples(tok, ["a", "b"], ["c"], 8)
    # Trimming drops exactly the all-padding columns: the longest row ends at the last column.
    trimmed = batching.trim_padding(enc, tok.pad_id)
    longest = int((enc["prompt_lengths"] + enc["mask"].sum(1)).max())  # bos, prompt, response, eos
    assert trimmed["tokens"].shape == (20, longest) and trimmed["mask"].shape == (20, longest - 1)
    np.testing.assert_array_equal(trimmed["tokens"], enc["tokens"][:, :longest])
    assert (enc["tokens"][:, longest:] == tok.pad_id).all() and enc["mask"][:, longest - 1:].sum() == 0


def test_index_sampler_is_a_pure_function_of_position_and_covers_each_epoch():
    sampler = batching.IndexSampler(num_examples=10, batch_size=3, seed=7)
    stream = np.concatenate([sampler.indices(p) for p in range(10)])  # 30 indices: three epochs
    epochs = stream.reshape(3, 10)
    for epoch in epochs:  # every example once per epoch, none dropped (batches run across epochs)
        assert sorted(epoch.tolist()) == list(range(10))
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled each epoch
    np.testing.assert_array_equal(batching.IndexSampler(10, 3, 7).indices(4), sampler.indices(4))  # resume
    # Grain shuffles epoch e with seed + e; the hashed seed keeps seed 8's first epoch unlike seed 7's second.
    nearby = np.concatenate([batching.IndexSampler(10, 10, 8).indices(0)])
    assert not np.array_equal(nearby, epochs[1]) and not np.array_equal(nearby, epochs[0])
    fn = sampler.batch_fn({"x": np.arange(10) * 10})
    np.testing.assert_array_equal(fn(2)["x"], sampler.indices(2) * 10)
    with pytest.raises(ValueError, match="at least one full batch"):
        batching.IndexSampler(2, 3, 0)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        batching.IndexSampler(10, 3, -1)
    with pytest.raises(ValueError, match="batch_size must be an int"):
        batching.IndexSampler(10, 2.5, 0)
    with pytest.raises(ValueError, match="position must be >= 0"):
        sampler.indices(-1)


def test_batches_keep_pairs_together_and_the_iterator_prefetches_the_same_batches():
    sampler = batching.IndexSampler(num_examples=5, batch_size=2, seed=3)
    rows = np.arange(10) * 10  # example i owns rows 2i and 2i + 1
    batches = batching.Batches(sampler, {"x": rows}, rows_per_example=2, per_example={"m": np.arange(5) + 0.5})
    for position in range(6):
        idx = sampler.indices(position)
        got = batches(position)
        np.testing.assert_array_equal(got["x"], np.stack([20 * idx, 20 * idx + 10], 1).reshape(-1))
        np.testing.assert_array_equal(got["m"], np.repeat(idx + 0.5, 2))
    for prefetch in (0, 2):
        it = batches.iterator(4, prefetch=prefetch)
        for position in range(4, 9):
            np.testing.assert_array_equal(next(it)["x"], batches(position)["x"])
        assert it.get_state() == {"next_index": 9}
        it.close()
    with pytest.raises(ValueError, match=r"every array needs 10 rows \(5 examples x 2\); got \{'x': 9\}"):
        batching.Batches(sampler, {"x": rows[:9]}, rows_per_example=2)
    with pytest.raises(ValueError, match="per_example array needs the sampler's 5 rows"):
        batching.Batches(sampler, {"x": rows}, rows_per_example=2, per_example={"m": np.arange(4)})
    with pytest.raises(ValueError, match="rows_per_example must be an int >= 1"):
        batching.Batches(sampler, {"x": rows}, rows_per_example=0)


def test_jsonl_task_splits_a_local_file_and_names_what_is_wrong(tmp_path):
    from jax_irl.data import jsonl
    from jax_irl import tasks

    path = tmp_path / "pairs.jsonl"
    jsonl.write_jsonl(str(path), [{"prompt": f"p{i}", "response": f" r{i}"} for i in range(10)])
    data = tasks.load(tasks.TaskConfig(name="jsonl", data_dir=str(path), train_examples=5, eval_examples=3))
    assert data.train_prompts == ["p0", "p1", "p2", "p3", "p4"] and data.eval_prompts == ["p7", "p8", "p9"]
    assert data.eval_references == ["r7", "r8", "r9"]
    with pytest.raises(ValueError, match="pass task.data_dir"):
        tasks.load(tasks.TaskConfig(name="jsonl"))
    with pytest.raises(ValueError, match="needs more than eval_examples=10"):
        tasks.load(tasks.TaskConfig(name="jsonl", data_dir=str(path), eval_examples=10))
    with pytest.raises(ValueError, match="task name must be one of"):
        tasks.TaskConfig(name="nope")
    assert tasks.get("gsm8k").score("so #### 42", "#### 42") == 1.0


def test_jsonl_that_is_not_utf8_names_the_file_and_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prompt": "a", "response": "b"}\n{"prompt": "caf\xe9", "response": "b"}\n')
    with pytest.raises(ValueError, match=r"latin1\.jsonl:2: not valid UTF-8"):
        jsonl.read_jsonl(str(path))
