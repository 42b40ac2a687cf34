"""Chemistry tools for RLSF (Jha et al. 2024) through RDKit (the ``chem`` extra): molecule generation and
forward synthesis, answered as SMILES.

Certificate spans, in the response's characters:
- a SMILES that does not parse: the character RDKit names ("check for mistakes around position N"), or, for
  an unclosed ring, the ring-bond digit left open;
- a SMILES that parses but does not sanitise: the offending atoms' characters (a valence above what the
  element allows: that atom; aromaticity that cannot be kekulised: each atom of the ring);
- required functional groups (SMARTS) that are missing: the whole molecule (the paper's rule: the molecule as
  a whole is wrong, no part of it is to blame);
- forward synthesis: product atoms whose element is not in the reactants, or more atoms of an element than the
  reactants hold (the atoms beyond the count); a product that the given reaction template cannot make, or that
  is not the reference product: the whole molecule.
The answer is the response's first non-empty line, stripped; text on later lines is marked as extra text.
Atom spans come from ``smiles_atom_spans``: SMILES atoms in order of appearance, which is RDKit's atom order.
"""

from __future__ import annotations

import collections
import itertools
import re
from typing import Callable, Dict, List, Mapping, Optional, Tuple, Union

from jax_irl.symbolic import Certificate, Span

try:
    from rdkit import Chem, rdBase
    from rdkit.Chem import AllChem
except ImportError:  # pragma: no cover - the chem extra is part of the test install
    Chem = None

# RDKit runs in the trainer's process, so what reaches it is capped: a SMILES of 10,000 aromatic atoms crashes
# RDKit (segfault) and one of 50,000 atoms allocates tens of GB, and deep branches overflow its parser's stack.
# Drug-like molecules are well under 100 heavy atoms and 200 characters. ``tests/symbolic/test_chemistry.py``
# checks every hostile family at these caps in a child process (no crash, well under a second) and that inputs
# beyond them get a certificate without RDKit being called.
MAX_SMILES_CHARS = 512
MAX_BRANCH_DEPTH = 32

_TOKEN = re.compile(r"(\[[^\[\]]*\]|Br|Cl|[BCNOPSFI]|[bcnops]|\*|%\d\d|\d|[=#$:/\\.\-+()~@?>])")
_PARSE_POSITION = re.compile(r"around position (\d+)")


def require_rdkit():
    if Chem is None:
        raise ImportError("the chemistry tools need RDKit: pip install 'jax_irl[chem]' (or pip install rdkit)")


def smiles_atom_spans(smiles: str) -> List[Tuple[int, int]]:
    """Character span of each atom of ``smiles`` in order of appearance (RDKit's atom indices): bracket atoms,
    the organic subset (B C N O P S F Cl Br I and aromatic b c n o p s) and '*'."""
    spans = []
    for m in _TOKEN.finditer(smiles):
        text = m.group(0)
        if text[0] == "[" or text[0].isalpha() or text == "*":
            spans.append((m.start(), m.end()))
    return spans


def open_ring_digits(smiles: str) -> List[Tuple[int, int]]:
    """Spans of ring-bond labels (digits or %nn outside brackets) opened and never closed."""
    opened: Dict[str, Tuple[int, int]] = {}
    for m in _TOKEN.finditer(smiles):
        text = m.group(0)
        if text.isdigit() or text.startswith("%"):
            if text in opened:
                del opened[text]
            else:
                opened[text] = (m.start(), m.end())
    return sorted(opened.values())


def check_smiles(smiles: str, offset: int = 0):
    """(sanitised molecule or None, spans): parse and sanitisation problems located in ``smiles``; spans are
    shifted by ``offset`` (where the SMILES sits in the response)."""
    require_rdkit()
    whole = Span(offset, offset + len(smiles), "")
    if not smiles:
        return None, [Span(offset, offset, "empty SMILES")]
    if len(smiles) > MAX_SMILES_CHARS:
        return None, [Span(offset + MAX_SMILES_CHARS, offset + len(smiles),
                           f"SMILES longer than {MAX_SMILES_CHARS} characters ({len(smiles)}): not checked")]
    if any(ch.isspace() for ch in smiles):
        at = next(k for k, ch in enumerate(smiles) if ch.isspace())
        return None, [Span(offset + at, offset + at + 1, "whitespace inside the SMILES")]
    depth = 0
    for k, ch in enumerate(smiles):
        depth += (ch == "(") - (ch == ")")
        if depth > MAX_BRANCH_DEPTH:
            return None, [Span(offset + k, offset + k + 1,
                               f"branches nested deeper than {MAX_BRANCH_DEPTH}: not checked")]
    with rdBase.CaptureErrorLog() as log:
        mol = Chem.MolFromSmiles(smiles, sanitize=False)
    if mol is None:
        messages = log.messages
        reason = next((line.split("SMILES Parse Error: ", 1)[1] for line in messages.splitlines()
                       if "SMILES Parse Error: " in line), "does not parse")
        reason = reason.split(" while parsing")[0].split(" for input")[0]
        m = _PARSE_POSITION.search(messages)
        if m:
            at = min(max(int(m.group(1)) - 1, 0), len(smiles) - 1)
            return None, [Span(offset + at, offset + at + 1, f"SMILES parse error: {reason}")]
        rings = open_ring_digits(smiles)
        if "unclosed ring" in messages and rings:
            return None, [Span(offset + s, offset + e, f"SMILES parse error: ring bond {smiles[s:e]} is never "
                                                       f"closed") for s, e in rings]
        return None, [Span(whole.start, whole.end, f"SMILES parse error: {reason}")]
    atoms = smiles_atom_spans(smiles)
    if len(atoms) != mol.GetNumAtoms():  # a SMILES feature the span finder does not know: blame the whole
        atoms = [(0, len(smiles))] * mol.GetNumAtoms()
    spans = []
    with rdBase.CaptureErrorLog():
        problems = Chem.DetectChemistryProblems(mol)
    for problem in problems:
        if hasattr(problem, "GetAtomIndices"):
            indices = problem.GetAtomIndices()
        elif hasattr(problem, "GetAtomIdx"):
            indices = (problem.GetAtomIdx(),)
        else:
            indices = ()
        message = problem.Message().replace("  ", " ")
        if indices:
            spans.extend(Span(offset + atoms[i][0], offset + atoms[i][1], message) for i in indices)
        else:
            spans.append(Span(whole.start, whole.end, message))
    if spans:
        return None, spans
    try:
        with rdBase.CaptureErrorLog():
            Chem.SanitizeMol(mol)
    except Exception as err:  # noqa: BLE001 - any sanitisation failure is a wrong molecule
        return None, [Span(whole.start, whole.end, f"does not sanitise: {err}")]
    return mol, []


def canonical(smiles_or_mol) -> Optional[str]:
    require_rdkit()
    mol = Chem.MolFromSmiles(smiles_or_mol) if isinstance(smiles_or_mol, str) else smiles_or_mol
    return None if mol is None else Chem.MolToSmiles(mol)


def _answer(response: str) -> Tuple[str, int, List[Span]]:
    """The first non-empty line, stripped, its offset, and spans for any text after it."""
    pos = 0
    lines = response.split("\n")
    for k, line in enumerate(lines):
        if line.strip():
            start = pos + len(line) - len(line.lstrip())
            answer = line.strip()
            rest_start = pos + len(line) + 1
            rest = response[rest_start:]
            extra = [Span(rest_start + len(rest) - len(rest.lstrip()), len(response.rstrip()),
                          "text after the answer line")] if rest.strip() else []
            return answer, start, extra
        pos += len(line) + 1
    return "", 0, []


Lookup = Union[Mapping[str, object], Callable[[str], object]]


def _lookup(table: Optional[Lookup], prompt: str, default=None):
    if table is None:
        return default
    return table(prompt) if callable(table) else table.get(prompt, default)


class _SmilesAnswerTool:
    """The checks every SMILES answer goes through: the first non-empty line is the answer (text after it is
    blamed), it must parse and sanitise, the subclass's own checks (`_checks`, spans on a parsed molecule), and,
    if a reference is given for the prompt, it must be that molecule (canonical SMILES)."""

    name = "rdkit-smiles"
    reference_words = "molecule"
    reference: Optional[Lookup] = None

    def _context(self, prompt: str):
        """What the subclass's checks need from the prompt, read before the answer: a bad prompt raises."""
        return None

    def _checks(self, prompt: str, context, mol, answer: str, start: int, spans: List[Span]) -> List[Span]:
        return []

    def check(self, prompt: str, response: str) -> Certificate:
        context = self._context(prompt)
        answer, start, extra = _answer(response)
        if not answer:
            return Certificate(False, (Span(0, len(response), "empty response: no SMILES"),), self.name)
        mol, spans = check_smiles(answer, start)
        spans = spans + extra
        if mol is not None:
            spans += self._checks(prompt, context, mol, answer, start, spans)
            reference = _lookup(self.reference, prompt)
            if reference is not None and canonical(mol) != canonical(reference):
                spans.append(Span(start, start + len(answer), f"not the reference {self.reference_words} {reference}"))
        details = (("canonical", canonical(mol)),) if mol is not None else ()
        return Certificate(mol is not None and not spans, tuple(spans), self.name, details)


class MoleculeTool(_SmilesAnswerTool):
    """A molecule as SMILES: it must parse and sanitise, contain every required group (name -> SMARTS, per
    prompt) and, if a reference is given for the prompt, be that molecule (canonical SMILES)."""

    name = "rdkit-molecule"

    def __init__(self, required_groups: Optional[Lookup] = None, reference: Optional[Lookup] = None):
        require_rdkit()
        self.required_groups, self.reference = required_groups, reference
        self._patterns: Dict[str, object] = {}

    def _pattern(self, smarts: str):
        if smarts not in self._patterns:
            pattern = Chem.MolFromSmarts(smarts)
            if pattern is None:
                raise ValueError(f"required group SMARTS {smarts!r} does not parse")
            self._patterns[smarts] = pattern
        return self._patterns[smarts]

    def _checks(self, prompt, context, mol, answer, start, spans):
        return [Span(start, start + len(answer), f"missing the required group {group} ({smarts})")
                for group, smarts in dict(_lookup(self.required_groups, prompt, {}) or {}).items()
                if not mol.HasSubstructMatch(self._pattern(smarts))]


class ForwardSynthesisTool(_SmilesAnswerTool):
    """The product of a reaction, as SMILES, given the reactants (per prompt: a dot-separated SMILES). Checks
    that it parses and sanitises, that its heavy atoms are conserved from the reactants (no element the
    reactants lack, no more atoms of an element than they hold), and, where given, that the reaction template
    (reaction SMARTS) yields it from the reactants and that it is the reference product."""

    name = "rdkit-forward-synthesis"
    reference_words = "product"

    def __init__(self, reactants: Lookup, *, template: Optional[Lookup] = None, reference: Optional[Lookup] = None):
        require_rdkit()
        self.reactants, self.template, self.reference = reactants, template, reference

    def _context(self, prompt: str):
        reactant_smiles = _lookup(self.reactants, prompt)
        if not reactant_smiles:
            raise KeyError(f"{self.name}: no reactants for the prompt {prompt[:80]!r}")
        reactants = [Chem.MolFromSmiles(s) for s in str(reactant_smiles).split(".")]
        if any(m is None for m in reactants):
            raise ValueError(f"{self.name}: the reactants {reactant_smiles!r} do not parse")
        return reactants

    def _checks(self, prompt, reactants, mol, answer, start, spans):
        found = self._conservation(mol, reactants, answer, start)
        template = _lookup(self.template, prompt)
        if template is not None and not spans and not found:
            made = self._products(template, reactants)
            if canonical(mol) not in made:
                found.append(Span(start, start + len(answer), f"the reaction {template} does not give this "
                                                              f"product from the reactants (it gives "
                                                              f"{sorted(made) or 'nothing'})"))
        return found

    @staticmethod
    def _conservation(mol, reactants, answer: str, offset: int) -> List[Span]:
        have = collections.Counter(a.GetSymbol() for m in reactants for a in m.GetAtoms() if a.GetAtomicNum() > 1)
        atoms = smiles_atom_spans(answer)
        seen: collections.Counter = collections.Counter()
        spans = []
        for atom in mol.GetAtoms():
            symbol = atom.GetSymbol()
            if atom.GetAtomicNum() <= 1:
                continue
            seen[symbol] += 1
            s, e = atoms[atom.GetIdx()] if len(atoms) == mol.GetNumAtoms() else (0, len(answer))
            if have[symbol] == 0:
                spans.append(Span(offset + s, offset + e, f"{symbol} is not in the reactants"))
            elif seen[symbol] > have[symbol]:
                spans.append(Span(offset + s, offset + e, f"more {symbol} atoms than the reactants hold "
                                                          f"({have[symbol]})"))
        return spans

    @staticmethod
    def _products(template: str, reactants) -> set:
        reaction = AllChem.ReactionFromSmarts(template)
        n = reaction.GetNumReactantTemplates()
        if n > len(reactants):
            raise ValueError(f"the reaction {template!r} needs {n} reactants; the prompt gives {len(reactants)}")
        made = set()
        outcomes = (o for order in itertools.permutations(reactants, n) for o in reaction.RunReactants(order))
        for outcome in outcomes:
            for product in outcome:
                try:
                    with rdBase.CaptureErrorLog():
                        Chem.SanitizeMol(product)
                    made.add(Chem.MolToSmiles(product))
                except Exception:  # noqa: BLE001 - an outcome RDKit cannot sanitise is not a product
                    continue
        return made


__all__ = ["ForwardSynthesisTool", "MoleculeTool", "canonical", "check_smiles", "open_ring_digits",
           "require_rdkit", "smiles_atom_spans"]
