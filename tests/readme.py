#!/usr/bin/env python3
"""Runs the README's tested blocks as a user would type them, and checks what they print.

A fenced block right after a line `<!-- tested -->` is run; the others are prose. All tested
blocks run in order, in one bash process (so `KEY=...` in one block is there in the next),
from the repository's root, with `set -euo pipefail`:

- a command line that is `cargo run` alone (environment assignments before it allowed) starts
  the gateway in the background, as a user's first terminal would, and waits for `/health`;
  the next such line stops the previous gateway first;
- `cargo test --workspace` is not run again: the check makes sure `.ci/run` runs that line;
- `curl` is the real curl, and fails the run on an HTTP status of 400 or more;
- a comment right after a command that starts with a status, `{` or `[` is what the command
  prints, and is compared with the first JSON document it printed (for `cargo run`: on
  stderr, where the gateway prints its platform key): `# 201 {"id": "key_…", …}` (see
  `matches`).

Needs bash, curl and jq. Writes the gateway's data to a temporary folder linked as ./data,
so it refuses to run when ./data exists.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = "<!-- tested -->"
ELLIPSES = ("…", "...")


# --- The expected shapes -------------------------------------------------------------------
#
# An expected output is JSON written for a reader, with ellipses:
#   "gw_key_…"       a string starting with `gw_key_` (text after the ellipsis: its end)
#   {...} or [...]   any object, any array
#   {"a": 1, …}      an object with at least `a` (without `…`: exactly these keys)
#   [x, …]           an array whose first item matches x (without `…`: exactly these items)
#   …                as a value: anything
# Strings are compared exactly, numbers by type, true/false/null by value.

ANY = object()


class Open:
    """An object or array written with a trailing ellipsis: more may follow."""

    def __init__(self, value):
        self.value = value


class Pattern:
    def __init__(self, text: str):
        self.text = text
        self.i = 0

    def error(self, what: str) -> ValueError:
        return ValueError(f"{what} at {self.i} in {self.text!r}")

    def skip(self):
        while self.i < len(self.text) and self.text[self.i] in " \t\r\n":
            self.i += 1

    def ellipsis(self) -> bool:
        self.skip()
        for e in ELLIPSES:
            if self.text.startswith(e, self.i):
                self.i += len(e)
                return True
        return False

    def parse(self):
        value = self.value()
        self.skip()
        if self.i != len(self.text):
            raise self.error("trailing text")
        return value

    def value(self):
        self.skip()
        if self.ellipsis():
            return ANY
        c = self.text[self.i : self.i + 1]
        if c == "{":
            return self.members()
        if c == "[":
            return self.items()
        if c == '"':
            return self.string()
        m = re.compile(r"-?\d+(\.\d+)?([eE][-+]?\d+)?|true|false|null").match(self.text, self.i)
        if not m:
            raise self.error("unexpected text")
        self.i = m.end()
        return json.loads(m.group(0))

    def string(self):
        m = re.compile(r'"((?:[^"\\]|\\.)*)"').match(self.text, self.i)
        if not m:
            raise self.error("unterminated string")
        self.i = m.end()
        return json.loads(m.group(0))

    def members(self):
        self.i += 1
        out, more = {}, False
        while True:
            self.skip()
            if self.text.startswith("}", self.i):
                self.i += 1
                return Open(out) if more else out
            if self.ellipsis():
                more = True
                self.skip()
                if self.text.startswith("}", self.i):
                    continue
                raise self.error("an object's ellipsis must come last")
            key = self.string()
            self.skip()
            if not self.text.startswith(":", self.i):
                raise self.error("expected ':'")
            self.i += 1
            out[key] = self.value()
            self.skip()
            if self.text.startswith(",", self.i):
                self.i += 1

    def items(self):
        self.i += 1
        out, more = [], False
        while True:
            self.skip()
            if self.text.startswith("]", self.i):
                self.i += 1
                if out == [ANY]:
                    return ANY
                return Open(out) if more else out
            if self.ellipsis():
                self.skip()
                if self.text.startswith("]", self.i):
                    more = bool(out)
                    if not out:
                        out = [ANY]
                    continue
                out.append(ANY)
            else:
                out.append(self.value())
            self.skip()
            if self.text.startswith(",", self.i):
                self.i += 1


def matches(expected, actual, path="$") -> list[str]:
    """Where `actual` differs from the shape `expected`; empty when it fits."""
    if expected is ANY:
        return []
    if isinstance(expected, Open):
        inner = expected.value
        if isinstance(inner, dict):
            if not isinstance(actual, dict):
                return [f"{path}: expected an object, got {json.dumps(actual)[:80]}"]
            return [d for k, v in inner.items() for d in member(k, v, actual, path)]
        if not isinstance(actual, list) or len(actual) < len(inner):
            return [f"{path}: expected an array of at least {len(inner)} item(s)"]
        return [d for n, v in enumerate(inner) for d in matches(v, actual[n], f"{path}[{n}]")]
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path}: expected an object, got {json.dumps(actual)[:80]}"]
        extra = sorted(set(actual) - set(expected))
        found = [f"{path}: unexpected key(s) {extra} (end the object with … to allow more)"] if extra else []
        return found + [d for k, v in expected.items() for d in member(k, v, actual, path)]
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [f"{path}: expected an array of {len(expected)} item(s), got {json.dumps(actual)[:80]}"]
        return [d for n, v in enumerate(expected) for d in matches(v, actual[n], f"{path}[{n}]")]
    if isinstance(expected, str):
        for e in ELLIPSES:
            if e in expected:
                head, _, tail = expected.partition(e)
                ok = isinstance(actual, str) and actual.startswith(head) and actual.endswith(tail)
                return [] if ok else [f"{path}: expected a string like {expected!r}, got {json.dumps(actual)[:80]}"]
        return [] if actual == expected else [f"{path}: expected {expected!r}, got {json.dumps(actual)[:80]}"]
    if isinstance(expected, bool) or expected is None:
        return [] if actual is expected else [f"{path}: expected {json.dumps(expected)}, got {json.dumps(actual)[:80]}"]
    ok = isinstance(actual, (int, float)) and not isinstance(actual, bool)
    return [] if ok else [f"{path}: expected a number, got {json.dumps(actual)[:80]}"]


def member(key, expected, actual: dict, path: str) -> list[str]:
    if key not in actual:
        return [f"{path}: missing key {key!r}"]
    return matches(expected, actual[key], f"{path}.{key}")


def check(expected_text: str, status: str, output: str) -> list[str]:
    """Compares one command's output (and HTTP status, for curl) with its expectation."""
    m = re.match(r"\s*(\d{3})\b\s*(.*)", expected_text, re.S)
    problems = []
    if m:
        if status != m.group(1):
            problems.append(f"status {status}, the README shows {m.group(1)}")
        expected_text = m.group(2)
    if not expected_text.strip():
        return problems
    pattern = Pattern(expected_text).parse()
    # The first JSON document printed (after cargo's own lines, say) is the one compared.
    start = re.search(r"^[{\[]", output, re.M)
    try:
        if not start:
            raise ValueError("no JSON")
        actual = json.JSONDecoder().raw_decode(output[start.start():])[0]
    except ValueError:
        return problems + [f"the output is not JSON: {output[:200]!r}"]
    return problems + matches(pattern, actual)


# --- Blocks into a script --------------------------------------------------------------------

def tested_blocks(readme: str) -> list[tuple[int, list[str]]]:
    lines = readme.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == MARKER:
            j = i + 1
            if j >= len(lines) or not lines[j].startswith("```"):
                sys.exit(f"README.md:{i + 1}: {MARKER} must stand right before a fenced block")
            k = j + 1
            while k < len(lines) and not lines[k].startswith("```"):
                k += 1
            blocks.append((j + 2, lines[j + 1 : k]))
            i = k
        i += 1
    return blocks


SERVE = re.compile(r"^((?:[A-Z_][A-Z0-9_]*=\S*\s+)*)cargo run\s*(#.*)?$")
EXPECT_START = re.compile(r"^#\s?(\d{3}\b.*|[{\[].*)$")


def balanced(text: str) -> bool:
    depth, in_string, escaped = 0, False, False
    for c in text:
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
    return depth <= 0


def script(blocks, expectations: list[str]) -> str:
    out = []
    for first_line, lines in blocks:
        i = 0
        while i < len(lines):
            line, number = lines[i], first_line + i
            stripped = line.strip()
            m = EXPECT_START.match(stripped)
            if m:
                text = m.group(1)
                while not balanced(text) and i + 1 < len(lines) and lines[i + 1].strip().startswith("#"):
                    i += 1
                    text += "\n" + lines[i].strip()[1:]
                expectations.append(text)
                out.append(f"__expect {len(expectations) - 1} {number}")
            elif stripped.startswith("cargo test --workspace"):
                out.append(f"__covered_by_ci {number}")
            elif SERVE.match(stripped):
                env = SERVE.match(stripped).group(1).strip()
                out.append(f"{env} __serve {number}".strip())
            else:
                out.append(line)
            i += 1
    return "\n".join(out) + "\n"


PRELUDE = r"""
set -euo pipefail
__work=$1
__checker=$2
__server_pid=
__stop_server() {
  if [ -n "$__server_pid" ]; then
    kill -INT "$__server_pid" 2>/dev/null || true
    wait "$__server_pid" 2>/dev/null || true
    __server_pid=
  fi
}
trap __stop_server EXIT
__serve() {
  __stop_server
  : >"$__work/out"
  echo "000" >"$__work/status"
  command cargo run >"$__work/server.log" 2>"$__work/out" &
  __server_pid=$!
  for _ in $(seq 1 3600); do  # a first `cargo run` compiles the gateway: up to 30 minutes
    if command curl -sf -o /dev/null http://localhost:8080/health; then return 0; fi
    if ! kill -0 "$__server_pid" 2>/dev/null; then
      echo "README.md:$1: the gateway stopped; its log:" >&2; tail -n 30 "$__work/out" "$__work/server.log" >&2; exit 1
    fi
    sleep 0.5
  done
  echo "README.md:$1: the gateway did not answer /health" >&2; exit 1
}
curl() {
  local status
  status=$(command curl -sS -o "$__work/out" -w '%{http_code}' "$@") || { cat "$__work/out"; return 1; }
  echo "$status" >"$__work/status"
  cat "$__work/out"
  if [ "$status" -ge 400 ]; then
    echo "curl $*: HTTP $status" >&2
    return 1
  fi
}
cargo() {
  command cargo "$@" >"$__work/out"
  echo "000" >"$__work/status"
  cat "$__work/out"
}
__expect() {
  python3 "$__checker" --compare "$__work" "$1" "README.md:$2"
}
__covered_by_ci() {
  grep -q '^cargo test --workspace$' .ci/run || { echo "README.md:$1: .ci/run does not run 'cargo test --workspace'" >&2; exit 1; }
}
"""


def run() -> int:
    readme = (ROOT / "README.md").read_text()
    blocks = tested_blocks(readme)
    if not blocks:
        print("README.md has no tested block", file=sys.stderr)
        return 1
    if (ROOT / "data").exists():
        print("./data exists: move it away (the check writes its own)", file=sys.stderr)
        return 1
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 8080)) == 0:
            print("port 8080 is taken: the README's gateway serves there", file=sys.stderr)
            return 1
    for tool in ("bash", "curl", "jq"):
        if not shutil.which(tool):
            print(f"{tool} is needed to run the README", file=sys.stderr)
            return 1
    expectations: list[str] = []
    body = script(blocks, expectations)
    with tempfile.TemporaryDirectory(prefix="readme-") as work:
        work_path = Path(work)
        (work_path / "expectations.json").write_text(json.dumps(expectations))
        (work_path / "data").mkdir()
        (ROOT / "data").symlink_to(work_path / "data")
        try:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "GATEWAY_", "JWT_", "NATS_URL"))}
            result = subprocess.run(
                ["bash", "-c", PRELUDE + body, "readme", work, str(Path(__file__).resolve())],
                cwd=ROOT,
                env=env,
            )
        finally:
            (ROOT / "data").unlink()
            for leftover in ("demo.json",):
                (ROOT / leftover).unlink(missing_ok=True)
    if result.returncode != 0:
        print(f"README check failed (exit {result.returncode})", file=sys.stderr)
        return 1
    print(f"README: {len(blocks)} tested blocks ran, {len(expectations)} outputs matched")
    return 0


def self_test() -> int:
    """The comparison must refuse what differs, or the README check proves nothing."""
    fits = [
        ('201 {"id": "key_…", "roles": ["admin"], …}', "201", '{"id": "key_1", "roles": ["admin"], "x": 1}'),
        ('{"items": [...], "nextCursor": "…"}', "000", '{"items": [1, 2], "nextCursor": "abc"}'),
        ('{"a": [{"b": 1}, …]}', "000", '{"a": [{"b": 2}, {"c": 3}]}'),
        ("[]", "000", "[]"),
        ('{"k": "gw_…"}', "000", '   Finished dev\n     Running `gateway`\n{"k": "gw_1"}'),
        ('{"a": {...}, "b": true}', "000", '{"a": {"z": 0}, "b": true}\n{"second": 1}'),
    ]
    differs = [
        ('201 {"id": "key_…"}', "200", '{"id": "key_1"}'),
        ('{"id": "key_…"}', "000", '{"id": "tnt_1"}'),
        ('{"id": "key_…"}', "000", '{"id": "key_1", "extra": 1}'),
        ('{"a": 1, …}', "000", '{"b": 1}'),
        ('{"a": "x"}', "000", '{"a": "y"}'),
        ('{"a": 1}', "000", '{"a": "1"}'),
        ('{"a": [1, 2]}', "000", '{"a": [1]}'),
        ('{"a": false}', "000", '{"a": null}'),
        ('{"a": 1}', "000", "not json"),
    ]
    failures = [c for c in fits if check(*c)] + [c for c in differs if not check(*c)]
    for case in failures:
        print(f"self-test: wrong verdict on {case}", file=sys.stderr)
    print(f"README checker self-test: {len(fits) + len(differs) - len(failures)} of {len(fits) + len(differs)} verdicts right")
    return 1 if failures else 0


def compare(work: str, index: str, where: str) -> int:
    expectations = json.loads((Path(work) / "expectations.json").read_text())
    status = (Path(work) / "status").read_text().strip()
    output = (Path(work) / "out").read_text()
    try:
        problems = check(expectations[int(index)], status, output)
    except ValueError as e:
        problems = [f"the README's expected output cannot be read: {e}"]
    if problems:
        print(f"{where}: the output differs from the README:", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        print(f"  output: {output[:600]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--compare":
        sys.exit(compare(*sys.argv[2:]))
    if len(sys.argv) == 2 and sys.argv[1] == "--self-test":
        sys.exit(self_test())
    sys.exit(run())
