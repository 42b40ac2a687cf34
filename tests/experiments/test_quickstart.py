import pytest

from experiments import quickstart


def test_problem_encoding_and_shift_mask_only_answers():
    import numpy as np

    rows, prompt_len, answers = quickstart.make_problems(np.random.default_rng(0), 3, 50)
    x, y, m = quickstart.shift(rows, prompt_len)
    for i in range(3):
        counted = [quickstart.CHARS[t] if t < len(quickstart.CHARS) else "<eos>" for t in y[i][m[i] > 0]]
        assert "".join(counted[:-1]) == str(answers[i]) and counted[-1] == "<eos>"


@pytest.mark.slow
def test_quickstart_runs_end_to_end(capsys):
    quickstart.main(["--steps", "30", "--td-weights", "0", "0.5"])
    out = capsys.readouterr().out
    assert "| 0 | MLE |" in out and "| 0.5 | IQLearn |" in out
    assert "nan" not in out.split("| td_weight |")[0]
    with pytest.raises(SystemExit):
        quickstart.main(["--steps", "0"])
