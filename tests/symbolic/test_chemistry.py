"""The RDKit tools: parse, valence and kekulisation errors on the offending atoms' characters, missing groups on
the whole molecule, atom conservation and reaction templates in forward synthesis."""

import numpy as np
import pytest

pytest.importorskip("rdkit", reason="RDKit is the chem extra (tools/setup.sh installs it)")
from rdkit import Chem  # noqa: E402

from jax_irl import symbolic  # noqa: E402
from jax_irl.data.tokenizer import train_bpe  # noqa: E402
from jax_irl.symbolic.chemistry import (ForwardSynthesisTool, MoleculeTool, open_ring_digits,  # noqa: E402
                                        smiles_atom_spans)

ACID = {"carboxylic acid": "C(=O)[OX2H1]"}


def _spans(cert):
    return cert.correct, [(s.start, s.end, s.message) for s in cert.spans]


def test_atom_spans_follow_rdkit_atom_order_on_random_smiles():
    rng = np.random.default_rng(0)
    molecules = ["c1ccccc1[N+](=O)[O-]", "C[C@H](N)C(=O)O", "Brc1ccc(Cl)cc1", "O=C1NC(=O)c2ccccc21",
                 "[2H]C([2H])Cl", "CC(C)Cc1ccc(cc1)[C@@H](C)C(=O)O", "C1CC2CCC1CC2", "OC[C@H]1OC(O)[C@H](O)[C@@H]1O",
                 "c1ccc2[nH]ccc2c1", "FC(F)(F)c1ccsc1", "C%10CC%10", "[Na+].[Cl-]", "*CC*"]
    checked = 0
    for smiles in molecules:
        mol = Chem.MolFromSmiles(smiles)
        # RDKit writes random atom orders; our spans must follow each one
        for variant in Chem.MolToRandomSmilesVect(mol, 10, randomSeed=int(rng.integers(1 << 30))):
            parsed = Chem.MolFromSmiles(variant, sanitize=False)
            spans = smiles_atom_spans(variant)
            assert len(spans) == parsed.GetNumAtoms(), variant
            for (s, e), atom in zip(spans, parsed.GetAtoms()):
                text = variant[s:e].strip("[]").lstrip("0123456789")
                assert text.lower().startswith(atom.GetSymbol().lower()), (variant, text, atom.GetSymbol())
                checked += 1
    assert checked > 500
    assert open_ring_digits("C1CC2CC1") == [(4, 5)] and open_ring_digits("C%12CC%12") == []


def test_molecule_errors_on_the_exact_characters():
    tool = MoleculeTool({"acid": ACID})
    assert _spans(tool.check("acid", "CC(=O)O")) == (True, [])
    assert _spans(tool.check("acid", "  CC(=O)O  \n")) == (True, [])
    # Pentavalent carbon: atom #1, the second 'C' (characters 1..2).
    assert _spans(tool.check("acid", "CC(C)(C)(C)C(=O)O")) == (False, [
        (1, 2, "Explicit valence for atom # 1 C, 5, is greater than permitted")])
    # A five-membered all-carbon aromatic ring cannot be kekulised: each ring atom's character.
    correct, spans = _spans(tool.check("acid", "c1cccc1C(=O)O"))
    assert not correct and [(s, e) for s, e, _ in spans] == [(0, 1), (2, 3), (3, 4), (4, 5), (5, 6)]
    assert _spans(tool.check("acid", "CC(C")) == (False, [(2, 3, "SMILES parse error: extra open parentheses")])
    assert _spans(tool.check("acid", "CC)C")) == (False, [(2, 3, "SMILES parse error: extra close parentheses")])
    assert _spans(tool.check("acid", "CCXC")) == (False, [(2, 3, "SMILES parse error: syntax error")])
    assert _spans(tool.check("acid", "OC(=O)C1CC")) == (False, [
        (7, 8, "SMILES parse error: ring bond 1 is never closed")])
    # Valid but missing the required group: the whole molecule, as the paper's rule has it.
    assert _spans(tool.check("acid", "  CCO")) == (False, [
        (2, 5, "missing the required group carboxylic acid (C(=O)[OX2H1])")])
    assert _spans(tool.check("acid", "CC(=O)O\nwhich is acetic acid")) == (False, [(8, 28, "text after the answer line")])


def test_bad_input_is_a_certificate():
    tool = MoleculeTool(reference={"ethanol": "OCC"})
    assert _spans(tool.check("ethanol", "")) == (False, [(0, 0, "empty response: no SMILES")])
    assert _spans(tool.check("ethanol", "\n \n")) == (False, [(0, 3, "empty response: no SMILES")])
    assert _spans(tool.check("ethanol", "C C")) == (False, [(1, 2, "whitespace inside the SMILES")])
    assert _spans(tool.check("ethanol", "CCO")) == (True, [])  # the reference in another atom order
    assert _spans(tool.check("ethanol", "CCCO")) == (False, [(0, 4, "not the reference molecule OCC")])
    long = "C" * 500 + "("
    correct, spans = _spans(tool.check("ethanol", long))
    assert not correct and spans[0][:2] == (500, 501)
    correct, spans = _spans(tool.check("ethanol", "C" * 20000 + "("))  # beyond the cap: the excess is blamed
    assert not correct and spans == [(512, 20001, "SMILES longer than 512 characters (20001): not checked")]
    assert not symbolic.safe_check(tool, "ethanol", "\udcff").correct
    with pytest.raises(ValueError, match="SMARTS"):
        MoleculeTool({"x": {"bad": "C(("}}).check("x", "CC")


def test_forward_synthesis_conservation_template_and_reference():
    tool = ForwardSynthesisTool({"ester": "CC(=O)O.OCC"},
                                template={"ester": "[C:1](=[O:2])[OH].[OH][C:3]>>[C:1](=[O:2])O[C:3]"},
                                reference={"ester": "CC(=O)OCC"})
    assert _spans(tool.check("ester", "CCOC(C)=O")) == (True, [])
    assert _spans(tool.check("ester", "CC(=O)OCCl")) == (False, [
        (8, 10, "Cl is not in the reactants"), (0, 10, "not the reference product CC(=O)OCC")])
    assert _spans(tool.check("ester", "CC(=O)OCCC")) == (False, [
        (9, 10, "more C atoms than the reactants hold (4)"), (0, 10, "not the reference product CC(=O)OCC")])
    correct, spans = _spans(tool.check("ester", "CC(=O)OC"))
    assert not correct and spans[0][:2] == (0, 8) and "does not give this product" in spans[0][2]
    with pytest.raises(KeyError, match="no reactants"):
        tool.check("unknown", "CC")
    bad = ForwardSynthesisTool({"x": "CC.C(("})
    with pytest.raises(ValueError, match="do not parse"):
        bad.check("x", "CC")


def test_token_rewards_when_a_span_starts_inside_a_token():
    text = "CC(C)(C)(C)C(=O)O"  # the pentavalent carbon is character 1
    tok = train_bpe([text, "CC(C)C", "CC(=O)O"] * 30, vocab_size=280)
    ids = tok.encode(text)
    offsets = symbolic.token_offsets(tok, ids)
    assert (0, 2) in offsets  # 'CC' is one token: the wrong atom's span starts inside it
    cert = MoleculeTool().check("", text)
    assert [(s.start, s.end) for s in cert.spans] == [(1, 2)]
    rewards = symbolic.token_rewards(cert, offsets, low=-1.0, high=1.0)
    expected = [-1.0 if s < 2 and 1 < e else 1.0 for s, e in offsets]
    expected[-1] = -1.0
    np.testing.assert_array_equal(rewards, expected)


# Hostile SMILES families (a huge aromatic system, deep branches, many ring bonds, bracket atoms, a long chain),
# built at exactly the caps: each must run through the whole molecule tool (parse, sanitise, canonical SMILES)
# without crashing or stalling. Run in a child process, so that a crash fails the test instead of pytest.
_AT_THE_CAPS = r'''
import sys, time
from jax_irl.symbolic import chemistry as ch
n, d = ch.MAX_SMILES_CHARS, ch.MAX_BRANCH_DEPTH
branch = "C(" * d + "C" + ")" * d
family = {"aromatic": "c1" + "c" * (n - 3) + "1", "branches": (branch + "C") * (n // (len(branch) + 1)),
          "ring bonds": "C" + "".join(f"%{10 + k % 89}" for k in range((n - 1) // 3)),
          "brackets": "[CH2]" * (n // 5), "chain": "C" * n, "aromatic ions": "[n+]1" + "c" * (n - 6) + "1"}
tool = ch.MoleculeTool()
worst = 0.0
for name, smiles in family.items():
    assert len(smiles) <= n, name
    start = time.perf_counter()
    cert = tool.check("p", smiles)
    worst = max(worst, time.perf_counter() - start)
print(worst)
'''


def test_hostile_smiles_at_the_caps_are_checked_in_process_safely():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _AT_THE_CAPS], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.strip()) < 1.0


@pytest.mark.parametrize("smiles, why", [
    ("c1" + "c" * 9997 + "1", "longer than 512 characters"),  # segfaults RDKit
    ("C" * 50_000, "longer than 512 characters"),  # tens of GB in RDKit
    ("C(" * 40 + "C" + ")" * 40, "nested deeper than 32"),
])
def test_smiles_beyond_the_caps_get_a_certificate_without_rdkit(smiles, why, monkeypatch):
    from jax_irl.symbolic import chemistry

    def refuse(*args, **kwargs):
        raise AssertionError("RDKit was called")

    monkeypatch.setattr(chemistry.Chem, "MolFromSmiles", refuse)
    cert = MoleculeTool().check("p", smiles)
    assert not cert.correct and any(why in s.message for s in cert.spans), cert.spans
