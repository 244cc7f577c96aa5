"""Mutation testing of the core pure code: would the tests notice a small change to it?

Mutants are made from the AST of contract/payloads.py, edge/batcher.py, gateway/oee.py,
gateway/timeline.py and gateway/engine.py, each one token rewritten in the text:

- comparisons: < <-> <=, > <-> >=, == <-> !=
- integer literals: n -> n - 1 and n + 1 (0 -> 1 only)
- arithmetic: + <-> -, * <-> / (also += <-> -=, *= <-> /=)
- boolean: and <-> or, a ``not`` removed
- min <-> max, np.fmin <-> np.fmax, np.minimum <-> np.maximum

Not mutated: docstrings, f-strings, the arguments of a ``raise``d call and of ``log.*`` calls (messages),
type annotations, module-level dict literals (data tables: state names, category maps).

Each mutant is written into a private copy of the tree (the working tree is never touched), the tests
that cover its file (TESTS) run there (``pytest -x``, none starts a server; Hypothesis seeded with
--hypothesis-seed=0 and its example database emptied before each run), and the file is restored. A failing
run kills the mutant; a run over TIMEOUT_S counts as killed too and is shown apart. Survivors are listed for
a person to judge; those judged equivalent (EQUIVALENT, with the reason) are left out of the kill rate.

    .venv/bin/python bench/mutants.py                          # 60 mutants, seed 1
    .venv/bin/python bench/mutants.py --sample 100 --seed 1 --json /tmp/mutants.json
    .venv/bin/python bench/mutants.py --files gateway/oee.py --sample 0 --list   # every mutant of a file
    .venv/bin/python bench/mutants.py --ids 'gateway/oee.py:167:41:>='            # re-run given mutants
"""
from __future__ import annotations

import argparse
import ast
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tokenize
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GATEWAY_TESTS = ["tests/gateway/test_oee.py", "tests/gateway/test_oee_boundaries.py",
                 "tests/gateway/test_timeline_boundaries.py", "tests/gateway/test_timeline_rows.py",
                 "tests/gateway/test_worked_examples.py",
                 "tests/gateway/test_engine.py", "tests/gateway/test_eventlog.py", "tests/gateway/test_prune.py",
                 "tests/gateway/test_properties.py"]  # fast ones first: -x stops at the first failure
#: file -> the tests that cover it (those that exist are run; none of them starts a server)
TESTS = {
    "contract/payloads.py": ["tests/contract/test_payloads.py", "tests/contract/test_payloads_boundaries.py",
                             "tests/contract/test_schemas.py", "tests/contract/test_decode_fuzz.py"],
    "edge/batcher.py": ["tests/edge/test_batcher.py", "tests/edge/test_batcher_boundaries.py",
                        "tests/edge/test_config.py"],
    "gateway/oee.py": GATEWAY_TESTS,
    "gateway/timeline.py": GATEWAY_TESTS,
    "gateway/engine.py": GATEWAY_TESTS,
}
PYTEST = ["-x", "-q", "-p", "no:cacheprovider", "-m", "not chaos", "--hypothesis-seed=0"]
TIMEOUT_S = 120.0

SWAP = {"<": "<=", "<=": "<", ">": ">=", ">=": ">", "==": "!=", "!=": "==", "+": "-", "-": "+", "*": "/",
        "/": "*", "+=": "-=", "-=": "+=", "*=": "/=", "/=": "*=", "and": "or", "or": "and"}
CALLS = {"min": "max", "max": "min", "fmin": "fmax", "fmax": "fmin", "minimum": "maximum", "maximum": "minimum"}
OPERATORS = (ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq, ast.Add, ast.Sub, ast.Mult, ast.Div)

#: Survivors judged equivalent (no result can change), by file and line as ``Mutant.where`` shows them: counted
#: apart, not in the kill rate of the others. A changed line makes its entry stale: the survivor is judged again.
EQUIVALENT = {
    ("contract/payloads.py", "if len(text) > [0xFFFF → 65534]:"):
        "the padded header's length is 4 modulo 8: never 65534 or 65535",
    ("contract/payloads.py", 'if ts.dtype.kind == "f" and ts.ndim == [1 → 0] and _non_decreasing(values, ts) and \\'):
        "the fast path is never taken; the slow one applies the same checks and returns the same array",
    ("contract/payloads.py", 'if not plausible and not 0 <= ts [< → <=] float("inf"):'):
        "ts is finite (checked just above)",
    ("gateway/oee.py", "t = np.full((len(MODELS), [17 → 18]), STOPPED, dtype=np.int8)"):
        "column 17 is never read: codes are clipped to 16, configured overrides are codes of the model",
    ("gateway/timeline.py", "MIN_CAP = [4 → 5]"): "a smallest capacity: memory only",
    ("gateway/timeline.py", "self.garbage = [0 → 1]"):
        "the first _grow_pool (machines(n), before any row is written) compacts the empty pool and sets it to 0",
    ("gateway/timeline.py", "if self.garbage [> → >=] self.top // 2:"):
        "when the pool is compacted (offsets are read after it): memory and time only",
    ("gateway/timeline.py", "if self.garbage > self.top // [2 → 3]:"):
        "when the pool is compacted (offsets are read after it): memory and time only",
    ("gateway/timeline.py", "b = np.full(([max → min](size, live), *shape), fill, dtype=dtype)"):
        "size >= live there: the compacted pool keeps no spare room, the next growth comes sooner: memory only",
    ("gateway/timeline.py", "new = np.where(new [< → <=] want, new * 2, new)"):
        "a segment that has exactly what it needs doubles once more while another one grows: memory only",
    ("gateway/timeline.py", "MOVE_ROWS = 1 << [18 → 19]"):
        "how many rows one step of drop moves: the same rows end up",
    ("gateway/timeline.py", "cap, need = self.cap[m].copy(), n + [2 → 1]"):
        "a segment gives room back a row sooner; what is left (>= 8 x (n + 1) rows) still holds fill + 2 rows",
    ("gateway/timeline.py", '("last_reason", 0, np.int64), ("ep_t", np.nan, np.float64), ("ep_cat", -[1 → 2], '
                            'np.int8),'):
        "no episode yet is any negative category: readers test ep_cat >= 0 or isin (BREAKDOWN, STOPPED)",
    ("gateway/timeline.py", "self.p = _Rows(0, capacity, t=((), np.float64, np.inf), cat=((), np.int8, [0 → 1]), "
                            "reason=((), np.int64, 0),"):
        "an unfilled row's category is only read with a weight of 0 s (np.add.at in _time_upto)",
    ("gateway/timeline.py", "self.p = _Rows(0, capacity, t=((), np.float64, np.inf), cat=((), np.int8, 0), "
                            "reason=((), np.int64, [0 → 1]),"):
        "an unfilled row's reason is never read: pieces, stop_reasons and classify read rows below fill",
    ("gateway/timeline.py", "self.c = _Rows([0 → 1], capacity, t=((), np.float64, np.inf), "
                            "pre=((5,), np.float64, 0.0))"):
        "a spare machine row before the first machine: add_machines(1) finds it, the same arrays from then on",
    ("gateway/timeline.py", "self.f = _Rows([0 → 1], 4, t=((), np.float64, np.inf))"):
        "a spare machine row before the first machine: add_machines(1) finds it, the same arrays from then on",
    ("gateway/timeline.py", "rows.reserve(m, fill [+ → -] 2)"):
        "_positions (and classify) reserved fill + 1 rows already, all that _reprefix writes (the prefix at row "
        "fill): a segment only lacks a spare row, memory only",
    ("gateway/timeline.py", "rows.reserve(m, fill + [2 → 3])"): "one row more capacity: memory only",
    ("gateway/timeline.py", "nxt = np.where(idx + 1 < rows.fill[mm], "
                            "rows.t[np.minimum(ii + 1, rows.at(mm, rows.cap[mm] - [1 → 2]))],"):
        "idx + 1 <= fill <= cap - 2 there (after the reserve of fill + 2): the clamp never bites",
    ("gateway/timeline.py", "e = np.where(idx + 1 < rows.fill[m], "
                            "rows.t[rows.at(m, np.minimum(idx + 1, rows.cap[m] [- → +] 1))], self.last_t[m])"):
        "idx + 1 <= fill <= cap - 1 there: the clamp never bites",
    ("gateway/timeline.py", "e = np.where(idx + 1 < rows.fill[m], "
                            "rows.t[rows.at(m, np.minimum(idx + 1, rows.cap[m] - [1 → 0]))], self.last_t[m])"):
        "idx + 1 <= fill <= cap - 1 there: the clamp never bites",
    ("gateway/timeline.py", '("last_good", -1, np.int64), ("last_reject", -[1 → 2], np.int64),'):
        "no sample yet is any negative value: counter_increase tests prev < 0",
    ("gateway/timeline.py", "if not np.isnan(self.last_t[m]) [and → or] self.now[m] > self.last_t[m]:"):
        "an open piece appended with now <= last_t is dropped by keep's e > s",
    ("gateway/timeline.py", "if not np.isnan(self.last_t[m]) and self.now[m] [> → >=] self.last_t[m]:"):
        "the empty open piece appended at now == last_t is dropped by keep's e > s",
    ("gateway/timeline.py", "openm = np.flatnonzero(~np.isnan(self.last_t) & (self.now [> → >=] self.last_t))"):
        "the empty open piece at now == last_t lasts 0 s and sel keeps only d > 0",
    ("gateway/engine.py", "CALENDAR_AHEAD = [2 → 3] * 86400.0"):
        "the calendar is laid out a day further ahead: the same calendar over the data, laid out less often",
    ("gateway/engine.py", "if span is not None and span[0] [<= → <] t0 and t1 + 6 * 3600 <= span[1]:"):
        "the calendar is laid out again at exactly the edge: the same calendar over the data",
    ("gateway/engine.py", "if span is not None and span[0] <= t0 and t1 + 6 * 3600 [<= → <] span[1]:"):
        "the calendar is laid out again at exactly the edge: the same calendar over the data",
}


@dataclass
class Mutant:
    file: str
    line: int
    col: int
    start: int  # character offsets in the file's text
    end: int
    original: str
    mutated: str
    where: str  # its line, without indentation and comment, the mutation in brackets: "if a [< → <=] b:"

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}:{self.col}:{self.mutated}"


def _skipped(tree: ast.Module) -> list[ast.AST]:
    """Nodes whose insides are not mutated: messages, annotations, data tables."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            out.append(node)
        elif isinstance(node, (ast.arg, ast.AnnAssign)) and node.annotation:
            out.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns:
            out.append(node.returns)
        elif isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            out.extend([*node.exc.args, *(k.value for k in node.exc.keywords)])
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                isinstance(node.func.value, ast.Name) and node.func.value.id == "log":
            out.extend([*node.args, *(k.value for k in node.keywords)])
    out += [n.value for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign)) and isinstance(n.value, ast.Dict)]
    return out


def mutants_of(file: str, text: str) -> list[Mutant]:
    """Every mutant of one file, in the order of the text."""
    lines = text.splitlines(keepends=True)
    starts = [0]
    for ln in lines:
        starts.append(starts[-1] + len(ln))

    def at(lineno: int, byte_col: int) -> int:  # AST columns count UTF-8 bytes
        return starts[lineno - 1] + len(lines[lineno - 1].encode()[:byte_col].decode())

    tokens = [(starts[t.start[0] - 1] + t.start[1], starts[t.end[0] - 1] + t.end[1], t.string)
              for t in tokenize.generate_tokens(io.StringIO(text).readline)]
    tree = ast.parse(text)
    skip = [(at(n.lineno, n.col_offset), at(n.end_lineno, n.end_col_offset)) for n in _skipped(tree)]
    found: list[tuple[int, int, str]] = []

    def between(a: ast.AST, b: ast.AST) -> None:  # the operator token between two operands
        lo, hi = at(a.end_lineno, a.end_col_offset), at(b.lineno, b.col_offset)
        for s, e, string in tokens:
            if lo <= s and e <= hi and string in SWAP:
                found.append((s, e, SWAP[string]))
                return

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                if isinstance(op, OPERATORS):
                    between(node.left if i == 0 else node.comparators[i - 1], node.comparators[i])
        elif isinstance(node, ast.BinOp) and isinstance(node.op, OPERATORS):
            between(node.left, node.right)
        elif isinstance(node, ast.AugAssign) and isinstance(node.op, OPERATORS):
            between(node.target, node.value)
        elif isinstance(node, ast.BoolOp):
            for a, b in zip(node.values, node.values[1:]):
                between(a, b)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            s = at(node.lineno, node.col_offset)
            e = s + len("not")
            while text[e] == " ":
                e += 1
            found.append((s, e, ""))
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            s, e = at(node.lineno, node.col_offset), at(node.end_lineno, node.end_col_offset)
            found += [(s, e, str(v)) for v in ((1,) if node.value == 0 else (node.value - 1, node.value + 1))]
        elif isinstance(node, ast.Name) and node.id in ("min", "max"):
            found.append((at(node.lineno, node.col_offset), at(node.end_lineno, node.end_col_offset), CALLS[node.id]))
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "np" \
                and node.attr in CALLS and node.attr not in ("min", "max"):
            e = at(node.end_lineno, node.end_col_offset)
            found.append((e - len(node.attr), e, CALLS[node.attr]))

    out = []
    for s, e, new in sorted(set(found)):
        if any(a <= s and e <= b for a, b in skip):
            continue
        line = next(i for i in range(len(lines)) if starts[i + 1] > s)
        where = f"{text[starts[line]:s]}[{text[s:e]} → {new}]{text[e:starts[line + 1]]}".strip().split("  #")[0]
        out.append(Mutant(file, line + 1, s - starts[line], s, e, text[s:e], new, where))
    return out


def apply(text: str, m: Mutant) -> str:
    return text[:m.start] + m.mutated + text[m.end:]


def all_mutants(files: list[str]) -> list[Mutant]:
    return [m for f in files for m in mutants_of(f, (ROOT / f).read_text())]


def compiles(m: Mutant) -> bool:
    """A mutant that does not compile would be "killed" by a syntax error: such ones are left out."""
    try:
        compile(apply((ROOT / m.file).read_text(), m), m.file, "exec")
        return True
    except SyntaxError:
        return False


def private_copy() -> Path:
    """The working tree as it is (without .git, .venv, caches) in a temp dir; its packages are the ones
    imported (checked)."""
    tree = Path(tempfile.mkdtemp(prefix="fieldlab-mutants-")) / "tree"
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info",
                                                              "test-artifacts", ".hypothesis", ".pytest_cache"))
    got = subprocess.run([sys.executable, "-c", "import gateway.oee; print(gateway.oee.__file__)"],
                         cwd=tree, env=_env(tree), capture_output=True, text=True).stdout.strip()
    if Path(got).resolve() != (tree / "gateway/oee.py").resolve():
        sys.exit(f"the private copy is not what Python imports ({got!r}): stopping")
    return tree


def _env(tree: Path) -> dict:
    # no .pyc: a mutant of the same length written within the same second would load the stale one
    return {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}


def run_tests(tree: Path, file: str) -> tuple[str, float]:
    """'killed', 'timeout' or 'survived' for the copy as it is now, with the seconds it took."""
    shutil.rmtree(tree / ".hypothesis", ignore_errors=True)  # no examples remembered from another mutant
    tests = [t for t in TESTS[file] if (tree / t).exists()]
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, "-m", "pytest", *PYTEST, *tests], cwd=tree, env=_env(tree),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        rc = p.wait(TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        return "timeout", time.monotonic() - t0
    return ("survived" if rc == 0 else "killed"), time.monotonic() - t0


def table(results: list[dict], files: list[str]) -> str:
    rows = ["| file | mutants | killed | of which timeouts | survived | of which judged equivalent | "
            "killed of the non-equivalent |", "|---|---:|---:|---:|---:|---:|---:|"]
    for f in [*files, "all"]:
        rs = [r for r in results if f in ("all", r["file"])]
        if not rs:
            continue
        k = sum(r["outcome"] != "survived" for r in rs)
        t = sum(r["outcome"] == "timeout" for r in rs)
        eq = sum(bool(r["equivalent"]) for r in rs)
        rate = f"{k}/{len(rs) - eq} = {100 * k / (len(rs) - eq):.0f} %" if len(rs) > eq else "-"
        rows.append(f"| {f} | {len(rs)} | {k} | {t} | {len(rs) - k} | {eq} | {rate} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sample", type=int, default=60, help="mutants drawn at random over all files (0: all)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--files", nargs="+", choices=list(TESTS), default=list(TESTS))
    ap.add_argument("--ids", nargs="+", help="run exactly these mutants (ids as --list prints them)")
    ap.add_argument("--list", action="store_true", help="print the chosen mutants and stop")
    ap.add_argument("--json", type=Path, help="write every result to this file")
    args = ap.parse_args()

    everything = all_mutants(args.files)
    if args.ids:
        chosen = [m for m in everything if m.id in set(args.ids)]
        if len(chosen) != len(set(args.ids)):
            sys.exit(f"unknown ids: {sorted(set(args.ids) - {m.id for m in chosen})}")
    elif args.sample and args.sample < len(everything):
        picked = set(random.Random(args.seed).sample(range(len(everything)), args.sample))
        chosen = [m for i, m in enumerate(everything) if i in picked]
    else:
        chosen = everything
    chosen = [m for m in chosen if compiles(m)]
    print(f"{len(chosen)} of {len(everything)} mutants (seed {args.seed})", flush=True)
    if args.list:
        for m in chosen:
            print(f"{m.id}   {m.where}")
        return

    tree = private_copy()
    t0 = time.monotonic()
    results = []
    try:
        for f in {tuple(TESTS[m.file]): m.file for m in chosen}.values():  # each set of tests once, unmutated
            if run_tests(tree, f)[0] != "survived":
                sys.exit(f"the tests of {f} fail without a mutant: fix them first")
        for i, m in enumerate(chosen, 1):
            target = tree / m.file
            original = target.read_text()
            target.write_text(apply(original, m))
            try:
                outcome, secs = run_tests(tree, m.file)
            finally:
                target.write_text(original)
            results.append({**asdict(m), "id": m.id, "outcome": outcome, "seconds": round(secs, 1),
                            "equivalent": EQUIVALENT.get((m.file, m.where)) if outcome == "survived" else None})
            print(f"[{i}/{len(chosen)}] {outcome:8} {secs:5.1f} s  {m.file}:{m.line}  {m.where}", flush=True)
    finally:
        shutil.rmtree(tree.parent, ignore_errors=True)
    print(f"\n{table(results, args.files)}\n\nwall time {time.monotonic() - t0:.0f} s")
    for title, judged in (("survivors to judge", False), ("survivors judged equivalent", True)):
        print(f"\n{title}:")
        for r in results:
            if r["outcome"] == "survived" and bool(r["equivalent"]) == judged:
                print(f"  {r['file']}:{r['line']}  {r['where']}" + (f"\n      ({r['equivalent']})" if judged else ""))
    if args.json:
        args.json.write_text(json.dumps({"seed": args.seed, "sample": args.sample, "results": results}, indent=1))


if __name__ == "__main__":
    main()
