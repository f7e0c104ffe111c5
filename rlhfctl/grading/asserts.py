"""Assert-style code tests, split so that the program under test cannot fake a pass.

A test such as ``assert add(2, 3) == 5`` is cut in two:

- the *holes*, the parts that need the program (``add(2, 3)``), run in the
  sandbox after the program; each assert becomes a call that reports the
  holes' values, encoded as plain data, on the run's results channel
  (`sandbox.RESULTS_FD`), and a last line says the test code ran to its end;
- the *check*, everything else (``_h0 == 5``): the comparison and the
  expected values, which never enter the sandbox, evaluated here on the
  decoded values.

So a program cannot learn the expected values (not from its own files,
its caller's frame, argv or the environment), cannot answer with an object
whose ``__eq__`` says yes (only built-in values cross the channel: numbers,
strings, bytes, None, and lists, tuples, sets and dicts of them), and cannot
pass by exiting early or by skipping asserts: a pass needs the end line,
every assert to have reported at least once, and every report to hold.
Whatever the program writes on the channel itself amounts to choosing the
values its functions return, which it could do anyway.

A hole is the largest part of the test that holds no expected value: a call
of a function the program defines, a name, an attribute, a comprehension, or
a call of a pure built-in (``sorted``, ``len``, ``math.isclose``, …) whose
arguments are all holes. A comparison written inside a comprehension, or an
expected value kept in a variable, is therefore computed in the sandbox;
tests that want the guarantee write expected values inside the assert.
"""

from __future__ import annotations

import ast
import builtins
import json
import math
from dataclasses import dataclass

REPORT = "__rlhfctl_report__"
END = "__rlhfctl_end__"
_MAX_DEPTH = 100  # nesting of a reported value
_HUGE = 10**7  # bound on repeated sequences' lengths and shifts in checks evaluated here

# Built-ins a check may call here: pure, and cheap on values of bounded size.
_SAFE_BUILTINS = {name: getattr(builtins, name)
                  for name in ("abs", "all", "any", "bool", "bytes", "complex", "dict", "divmod", "float",
                               "frozenset", "int", "isinstance", "len", "list", "max", "min", "repr", "reversed",
                               "round", "set", "sorted", "str", "sum", "tuple", "type")}
_SAFE_MATH = {name: getattr(math, name) for name in ("ceil", "e", "exp", "fabs", "floor", "fsum", "inf", "isclose",
                                                     "isinf", "isnan", "log", "nan", "pi", "sqrt", "trunc")}


@dataclass(frozen=True)
class Check:
    """One assert: its test with hole i renamed ``_h{i}``, evaluated here on the reported values."""

    expression: str
    holes: int


@dataclass(frozen=True)
class SplitTests:
    """`script` runs in the sandbox after the program; `checks[i]` judges what assert i reports."""

    script: str
    checks: tuple[Check, ...]


def split(code: str) -> SplitTests:
    """Cut the test code (SyntaxError if it is not Python) into its sandbox script and checks."""
    tree = ast.parse(code)
    rewriter = _Rewriter()
    tree = ast.fix_missing_locations(rewriter.visit(tree))
    tree.body.append(ast.Expr(ast.Call(ast.Name(END, ast.Load()), [], [])))
    ast.fix_missing_locations(tree)
    return SplitTests(_PRELUDE + ast.unparse(tree) + "\n", tuple(rewriter.checks))


class _Rewriter(ast.NodeTransformer):
    def __init__(self):
        self.checks: list[Check] = []

    def visit_Assert(self, node: ast.Assert) -> ast.stmt:
        holes: list[ast.expr] = []
        expression = ast.unparse(_skeleton(node.test, holes))
        site = len(self.checks)
        self.checks.append(Check(expression, len(holes)))
        thunks = [ast.Lambda(ast.arguments([], [], None, [], [], None, []), hole) for hole in holes]
        return ast.copy_location(ast.Expr(ast.Call(ast.Name(REPORT, ast.Load()), [ast.Constant(site), *thunks], [])),
                                 node)


def _skeleton(node: ast.expr, holes: list[ast.expr]) -> ast.expr:
    """`node` with each hole replaced by ``_h{i}`` (the hole appended to `holes`)."""
    if _is_hole(node):
        holes.append(node)
        return ast.Name(f"_h{len(holes) - 1}", ast.Load())
    return _Holes(holes).generic_visit(node)


class _Holes(ast.NodeTransformer):
    def __init__(self, holes: list[ast.expr]):
        self.holes = holes

    def visit(self, node):
        if isinstance(node, ast.expr) and _safe_name(node):
            return node
        if isinstance(node, ast.expr) and _is_hole(node):
            self.holes.append(node)
            return ast.Name(f"_h{len(self.holes) - 1}", ast.Load())
        return self.generic_visit(node)


def _is_hole(node: ast.expr) -> bool:
    """Whether `node` is evaluated in the sandbox: it needs the program and holds no expected value."""
    if isinstance(node, (ast.Constant, ast.Starred, ast.JoinedStr, ast.FormattedValue)) or _safe_name(node):
        return False
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return bool(node.elts) and all(_is_hole(e) for e in node.elts)
    if isinstance(node, ast.Dict):
        return False if not node.keys else all(k is not None and _is_hole(k) for k in node.keys) and \
            all(_is_hole(v) for v in node.values)
    if isinstance(node, (ast.Compare, ast.BoolOp)):
        return False
    if isinstance(node, ast.UnaryOp):
        return not isinstance(node.op, ast.Not) and _is_hole(node.operand)
    if isinstance(node, ast.BinOp):
        return _is_hole(node.left) and _is_hole(node.right)
    if isinstance(node, ast.IfExp):
        return all(_is_hole(n) for n in (node.test, node.body, node.orelse))
    if isinstance(node, ast.Call) and _safe_name(node.func):  # options such as reverse=True do not count
        options = all(isinstance(k.value, ast.Constant) or _is_hole(k.value) for k in node.keywords)
        return bool(node.args) and options and all(not isinstance(a, ast.Starred) and _is_hole(a) for a in node.args)
    return True  # a call of the program's code, a name, an attribute, a subscript, a comprehension, …


def _safe_name(node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        return node.id in _SAFE_BUILTINS
    return isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "math" \
        and node.attr in _SAFE_MATH


# --- judging a run's reports ----------------------------------------------------------

def holds(tests: SplitTests, results: str) -> bool:
    """Whether the reports in `results` say the test code ran to its end and every assert ran and held."""
    lines = results.splitlines()
    if not lines or lines[-1] != json.dumps({"end": True}):
        return False
    seen = set()
    for line in lines[:-1]:
        try:
            report = json.loads(line)
            check = tests.checks[report["site"]]
            values = [_decode(v, 0) for v in report["holes"]]
        except (ValueError, TypeError, KeyError, IndexError, RecursionError):
            return False
        if len(values) != check.holes or not _evaluate(check, values):
            return False
        seen.add(report["site"])
    return len(seen) == len(tests.checks)


class _Raised(Exception):
    """A hole raised in the sandbox; re-raised here where the check reads it."""


class _Values(dict):
    def __getitem__(self, key):
        value = super().__getitem__(key)
        if isinstance(value, _Raised):
            raise value
        return value


def _evaluate(check: Check, values: list) -> bool:
    """The check's truth on `values`; an exception (a hole that raised included) is False."""
    scope = _Values({f"_h{i}": v for i, v in enumerate(values)})
    scope.update(_SAFE_BUILTINS)
    scope["math"] = _Math()
    try:
        return bool(eval(_guarded(check.expression), {"__builtins__": {}, "_binop": _binop}, scope))
    except Exception:  # noqa: BLE001 - a check that cannot be evaluated does not hold
        return False


class _Math:
    def __getattr__(self, name):
        return _SAFE_MATH[name]


def _guarded(expression: str):
    """The expression compiled with every binary operator through `_binop`, which refuses huge results."""
    tree = ast.parse(expression, mode="eval")

    class Guard(ast.NodeTransformer):
        def visit_BinOp(self, node):
            self.generic_visit(node)
            return ast.Call(ast.Name("_binop", ast.Load()),
                            [ast.Constant(type(node.op).__name__), node.left, node.right], [])

    return compile(ast.fix_missing_locations(Guard().visit(tree)), "<check>", "eval")


_OPS = {"Add": lambda a, b: a + b, "Sub": lambda a, b: a - b, "Mult": lambda a, b: a * b,
        "Div": lambda a, b: a / b, "FloorDiv": lambda a, b: a // b, "Mod": lambda a, b: a % b,
        "Pow": lambda a, b: a ** b, "LShift": lambda a, b: a << b, "RShift": lambda a, b: a >> b,
        "BitOr": lambda a, b: a | b, "BitAnd": lambda a, b: a & b, "BitXor": lambda a, b: a ^ b}


def _binop(op: str, a, b):
    """``a op b``, refusing results that a reported value could make huge (a hole is the program's choice)."""
    numbers = all(isinstance(x, (int, float, complex)) for x in (a, b))
    if op == "Pow" and numbers and abs(b) > 4096 and abs(a) not in (0, 1):
        raise OverflowError("exponent too large for a check")
    if op == "LShift" and numbers and b > _HUGE:
        raise OverflowError("shift too large for a check")
    if op == "Mult" and not numbers:
        count, seq = (a, b) if isinstance(a, int) else (b, a)
        if isinstance(count, int) and count * len(seq) > _HUGE:
            raise OverflowError("repetition too large for a check")
    return _OPS[op](a, b)


def _decode(value, depth: int):
    """A reported value as a built-in one; ValueError for anything else."""
    if depth > _MAX_DEPTH or not isinstance(value, list) or not value or not isinstance(value[0], str):
        raise ValueError("malformed value")
    kind, rest = value[0], value[1:]
    if kind == "none" and not rest:
        return None
    if kind == "bool" and len(rest) == 1 and isinstance(rest[0], bool):
        return rest[0]
    if kind == "int" and len(rest) == 1 and isinstance(rest[0], str):
        return int(rest[0], 16)
    if kind == "float" and len(rest) == 1 and isinstance(rest[0], str):
        return float.fromhex(rest[0])
    if kind == "complex" and len(rest) == 2 and all(isinstance(r, str) for r in rest):
        return complex(float.fromhex(rest[0]), float.fromhex(rest[1]))
    if kind == "str" and len(rest) == 1 and isinstance(rest[0], str):
        return rest[0]
    if kind == "bytes" and len(rest) == 1 and isinstance(rest[0], str):
        return bytes.fromhex(rest[0])
    if kind in ("list", "tuple", "set", "frozenset") and len(rest) == 1 and isinstance(rest[0], list):
        return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[kind](
            _decode(v, depth + 1) for v in rest[0])
    if kind == "dict" and len(rest) == 1 and isinstance(rest[0], list):
        pairs = rest[0]
        if not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            raise ValueError("malformed dict")
        return {_decode(k, depth + 1): _decode(v, depth + 1) for k, v in pairs}
    if kind == "raised":
        return _Raised(str(rest))
    raise ValueError(f"not a built-in value: {kind}")


# What runs in the sandbox before the test code: the reporter, which encodes
# each hole's value (or the exception it raised) and writes one line per assert
# on the results channel. Nothing here is trusted: see the module docstring.
_PRELUDE = '''
def __rlhfctl_report__(site, *holes, _os=__import__("os"), _json=__import__("json")):
    def encode(x, depth=0):
        if depth > 100:
            return ["deep"]
        t = type(x)
        if x is None:
            return ["none"]
        if t is bool:
            return ["bool", x]
        if isinstance(x, int):
            return ["int", hex(int(x))]
        if isinstance(x, float):
            return ["float", float.hex(float(x))]
        if isinstance(x, complex):
            return ["complex", float.hex(x.real), float.hex(x.imag)]
        if isinstance(x, str):
            return ["str", str.__str__(x)]
        if isinstance(x, (bytes, bytearray)):
            return ["bytes", bytes(x).hex()]
        for kind in (tuple, list, frozenset, set):
            if isinstance(x, kind):
                return [kind.__name__, [encode(v, depth + 1) for v in kind.__iter__(x)]]
        if isinstance(x, dict):
            return ["dict", [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in dict.items(x)]]
        return ["object", t.__name__]
    values = []
    for hole in holes:
        try:
            values.append(encode(hole()))
        except Exception as e:
            values.append(["raised", type(e).__name__])
    line = (_json.dumps({"site": site, "holes": values}) + "\\n").encode()
    while line:
        line = line[_os.write(3, line):]

def __rlhfctl_end__(_os=__import__("os")):
    _os.write(3, b'{"end": true}\\n')

'''
