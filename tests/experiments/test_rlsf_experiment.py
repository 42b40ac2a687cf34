"""The RLSF experiment end to end at tiny size, its config checks, and the Game of 24 task it trains on."""

import json
import os

import pytest

from experiments import run
from jax_irl.data import game24
from jax_irl import tasks
from jax_irl.symbolic.game24 import Game24Tool

TINY = ["seeds=(0)", "base.pretrain.steps=6", "base.pretrain.optimizer.warmup_steps=1", "sft.steps=4",
        "sft.optimizer.warmup_steps=1", "sft.batch_size=8", "task.train_examples=64", "task.eval_examples=4",
        "base.vocab_size=300", "base.model.hidden_size=32", "base.model.intermediate_size=64",
        "base.calculation_rows=16", "ppo.iterations=2", "ppo.prompts_per_rollout=8", "ppo.samples_per_prompt=2",
        "ppo.max_new_tokens=8", "grpo.iterations=2", "grpo.prompts_per_rollout=8", "grpo.group_size=2",
        "grpo.max_new_tokens=8", "eval_every=1", "eval_samples=2", "settings.save_every=2",
        "methods=(scalar,token,grpo_blame,dapo_token)"]


def test_every_game24_training_solution_is_certified_and_the_split_is_disjoint():
    data = tasks.load(tasks.TaskConfig(name="game24", train_examples=5000, eval_examples=100))
    assert len(data.train_prompts) == 1362 - 100 and len(data.eval_prompts) == 100
    assert not set(data.train_prompts) & set(data.eval_prompts)
    tool = Game24Tool()
    assert all(tool.check(p, r).correct for p, r in zip(data.train_prompts, data.train_responses))
    assert game24.solution_steps([4, 6, 1, 1]) == ["6 * 4 = 24", "1 * 1 = 1", "24 * 1 = 24"]
    assert game24.solution_steps([3, 3, 8, 8]) == ["8 / 3 = 8/3", "3 - 8/3 = 1/3", "8 / 1/3 = 24"]
    assert game24.solution_steps([1, 1, 1, 1]) is None
    assert tasks.get("game24").score(" 6 * 4 = 24\n24 * 1 = 24\n24 * 1 = 24", "1 1 4 6") == 1.0
    assert tasks.get("game24").score(" 6 * 4 = 25", "1 1 4 6") == 0.0


def test_config_checks_name_what_is_wrong():
    mod = run.load_config_module("rlsf_game24")
    with pytest.raises(ValueError, match=r"unknown: \['dpo'\]"):
        mod.validate(run.apply_overrides(mod.config(), ["methods=(token,dpo)"]))
    with pytest.raises(ValueError, match=r"symbolic tool wired in rlsf.TASKS \['game24', 'pseudocode', 'spoc'\]; "
                                         r"task.name is 'arithmetic'"):
        mod.validate(run.apply_overrides(mod.config(), ["task.name=arithmetic"]))
    with pytest.raises(ValueError, match=r"task 'arithmetic' has no symbolic tool; tasks with one: \['game24'"):
        tasks.tool(tasks.TaskConfig(name="arithmetic"))
    with pytest.raises(run.ConfigError, match="RewardSpec.kind"):
        run.apply_overrides(mod.config(), ["variants.token.kind=dense"])
    with pytest.raises(run.ConfigError, match="PPOConfig.epochs"):
        run.apply_overrides(mod.config(), ["ppo.epochs=0"])
    with pytest.raises(run.ConfigError, match="GroupArm.credit"):
        run.apply_overrides(mod.config(), ["group_arms.dapo.credit=everything"])
    with pytest.raises(run.ConfigError, match="GRPOConfig.group_size"):
        run.apply_overrides(mod.config(), ["grpo.group_size=1"])
    with pytest.raises(ValueError, match="clip_high .* must be >= clip_low"):
        mod.validate(run.apply_overrides(mod.config(), ["grpo.clip_high=0.1"]))


@pytest.mark.slow
def test_rlsf_experiment_end_to_end_and_reuse(tmp_path, capsys):
    folder = str(tmp_path / "rlsf")
    assert run.main(["rlsf_game24", *TINY, "--run-dir", folder]) == 0
    out = capsys.readouterr().out
    assert "| scalar |" in out and "| token |" in out and "| sft |" in out and "| dapo_token |" in out
    with open(os.path.join(folder, "results.json")) as f:
        results = json.load(f)
    assert set(results["summary"]) == {"scalar", "token", "grpo_blame", "dapo_token", "sft"}
    for name, vals in results["summary"].items():
        assert 0.0 <= vals["success"][0] <= 1.0 and 0.0 <= vals["true_steps"][0] <= 1.0, name
    for name in ("token", "grpo_blame"):  # SFT, then every iteration (2 epochs x 2 minibatches)
        assert set(results["curves"][name]) == {"0", "4", "8"}, name
    assert set(results["rollouts"]["scalar"]) == {"0", "1"}
    assert results["summary"]["scalar"]["responses"][0] == 2 * 16  # 2 iterations of 8 prompts x 2 samples
    assert results["summary"]["grpo_blame"]["responses"][0] == 2 * 16  # 2 iterations of 8 prompts x 2
    assert results["summary"]["dapo_token"]["responses"][0] >= 2 * 16  # dynamic sampling may draw more
    # PPO's adaptive coefficient (kl_target 1, horizon 800): iteration 0's rollout is pi_sft's own (KL 0), so the
    # error is clipped to -0.2 and iteration 1 runs at 0.05 * (1 - 0.2 * 16 / 800); a group arm's is its preset's
    assert results["summary"]["scalar"]["kl_coef"][0] == pytest.approx(0.05 * (1 - 0.2 * 16 / 800), rel=1e-6)
    assert results["summary"]["grpo_blame"]["kl_coef"][0] == 0.04
    assert results["summary"]["dapo_token"]["kl_coef"][0] == 0.0
    rollout0 = results["rollouts"]["dapo_token"]["0"]
    assert {"degenerate_share", "sampler_logprob_gap_max", "reward_std_in_group"} <= set(rollout0)
    for png in ("success_kl_vs_steps.png", "rollouts.png"):
        assert os.path.getsize(os.path.join(folder, png)) > 10_000
    assert run.main(["rlsf_game24", "--run-dir", folder]) == 0
    with open(os.path.join(folder, "results.json")) as f:
        assert json.load(f)["per_run"] == results["per_run"]


def test_pseudocode_programs_pass_their_own_tests_and_are_reproducible():
    from jax_irl.data import pseudocode
    from jax_irl.symbolic.programs import PythonTool, TestCase

    programs = pseudocode.make_programs(seed=3, n=12)
    assert programs == pseudocode.make_programs(seed=3, n=12)
    assert len({pseudocode.prompt(p) for p in programs}) == 12
    tool = PythonTool({pseudocode.prompt(p): [TestCase(str(k), i, o) for k, (i, o) in enumerate(p["tests"])]
                       for p in programs})
    certs = tool.check_many([pseudocode.prompt(p) for p in programs], [pseudocode.response(p) for p in programs])
    assert all(c.correct for c in certs), [c.describe() for c in certs if not c.correct]
    assert any("for i in range" in pseudocode.response(p) for p in pseudocode.make_programs(seed=0, n=40))
    data = tasks.load(tasks.TaskConfig(name="pseudocode", train_examples=30, eval_examples=5))
    assert not set(data.train_prompts) & set(data.eval_prompts)
    wrong = data.eval_references[0]
    assert tasks.get("pseudocode").score("print(0)", wrong) == 0.0


@pytest.mark.slow
def test_rlsf_code_experiment_end_to_end(tmp_path, capsys):
    folder = str(tmp_path / "code")
    tiny = [t for t in TINY if not t.startswith("task.")] + ["task.train_examples=32", "task.eval_examples=3",
                                                            "base.max_length=96", "ppo.max_new_tokens=12",
                                                            "methods=(token)"]
    assert run.main(["rlsf_code", *tiny, "--run-dir", folder]) == 0
    with open(os.path.join(folder, "results.json")) as f:
        results = json.load(f)
    assert set(results["summary"]) == {"token", "sft"}
    for vals in results["summary"].values():
        assert 0.0 <= vals["compiles"][0] <= 1.0 and 0.0 <= vals["success"][0] <= vals["compiles"][0]


def test_spoc_records_and_the_paper_scale_config_checks(tmp_path):
    from jax_irl.data import jsonl

    path = tmp_path / "spoc.jsonl"
    good = {"prompt": "read n, print n", "response": "#include <iostream>\nint main(){int n;std::cin>>n;"
            "std::cout<<n;}", "tests": [["3\n", "3"], {"stdin": "4\n", "expected": "4"}]}
    path.write_text("\n".join(json.dumps(dict(good, prompt=f"p{k}")) for k in range(4)) + "\n")
    records = jsonl.read_program_records(str(path))
    assert records[0]["tests"] == [["3\n", "3"], ["4\n", "4"]] and len(records) == 4
    data = tasks.load(tasks.TaskConfig(name="spoc", data_dir=str(path), train_examples=10, eval_examples=1))
    assert data.train_prompts == ["p0", "p1", "p2"] and json.loads(data.eval_references[0]) == records[3]["tests"]
    tool = tasks.tool(tasks.TaskConfig(name="spoc", data_dir=str(path), train_examples=10, eval_examples=1))
    assert [(t.name, t.stdin, t.expected) for t in tool.tests["p3"]] == [("test 1", "3\n", "3"), ("test 2", "4\n", "4")]
    assert tool.check("p3", good["response"]).correct and not tool.check("p3", "int main(){}").correct
    for bad, match in (({"prompt": "p", "response": "r", "tests": []}, "non-empty list"),
                       ({"prompt": "p", "response": "r", "tests": [["x"]]}, "test 0 must be"),
                       ({"prompt": 3, "response": "r", "tests": [["a", "b"]]}, "'prompt' must be a string")):
        path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
        with pytest.raises(ValueError, match=f"spoc.jsonl:2: .*{match}"):
            jsonl.read_program_records(str(path))
    with pytest.raises(FileNotFoundError, match="no such JSONL file"):
        jsonl.read_program_records(str(tmp_path / "missing.jsonl"))
    mod = run.load_config_module("rlsf_spoc")
    with pytest.raises(ValueError, match="base.hf_checkpoint"):
        mod.validate(mod.config())
    with pytest.raises(ValueError, match="task.data_dir"):
        mod.validate(run.apply_overrides(mod.config(), ["base.hf_checkpoint=/models/x"]))


@pytest.mark.slow
def test_rlsf_with_lora_trains_adapters_only_through_sft_ppo_and_grpo(tmp_path, capsys):
    folder = str(tmp_path / "rlsf_lora")
    tiny = [t for t in TINY if not t.startswith("methods=")] + ["methods=(scalar,grpo_blame)", "lora.rank=2",
                                                                  "lora.targets=attn,mlp"]
    assert run.main(["rlsf_game24", *tiny, "--run-dir", folder]) == 0
    out = capsys.readouterr().out
    assert "lora: rank 2 on q,k,v,o,gate,up,down" in out and "| grpo_blame |" in out
    with open(os.path.join(folder, "config.json")) as f:
        assert json.load(f)["base"]["lora"]["rank"] == 2
    # The SFT stage's checkpoints hold the adapters alone (with Adam's moments): far below the base's size.
    sizes = {}
    for root, _, files in os.walk(folder):
        if os.sep + "checkpoints" + os.sep in root + os.sep:
            stage = root.split(os.sep + "checkpoints")[0]
            sizes[stage] = sizes.get(stage, 0) + sum(os.path.getsize(os.path.join(root, f)) for f in files)
    base = [s for k, s in sizes.items() if k.endswith(os.sep + "base")]
    sft = [s for k, s in sizes.items() if os.sep + "sft" in k]
    assert base and sft and max(sft) < base[0] / 3, sizes
