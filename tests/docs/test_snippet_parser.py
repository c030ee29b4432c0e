"""The snippet runner's reading of a page (tests/docs/snippets.py): blocks, markers,
expected output, ports.  Fast; runs with `make test`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.docs import snippets
from tests.docs.snippets import (
    Block,
    blocks,
    is_project_command,
    output_matches,
    python_expectation,
    shell_commands,
    substitute_ports,
    wants_server,
)

PAGE = """# A page

<!-- snippets: server -->

```python
print(1 + 1)   # -> 2
```

<!-- snippet: skip reason="needs a cluster" -->
```bash
kubectl get pods
```

<!-- snippet: requires="no_such_module_here" -->
```python
import no_such_module_here
```

```bash
curl -s localhost:1337/x \\
  -d '{}'
# -> {"a": 1,
#    "b": 2}
clipper apps
```
"""


@pytest.fixture
def page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(snippets, "ROOT", tmp_path)
    path = tmp_path / "page.md"
    path.write_text(PAGE)
    return path


def test_blocks_their_lines_and_markers(page: Path) -> None:
    found = blocks(page)
    assert [(b.lang, b.line) for b in found] == [
        ("python", 6),
        ("bash", 11),
        ("python", 16),
        ("bash", 20),
    ]
    assert found[1].skip_reason(set()) == "needs a cluster"
    assert found[2].skip_reason(set()) == "needs no_such_module_here (not importable here)"
    assert found[2].skip_reason({"no_such_module_here"}) is None
    assert found[0].skip_reason(set()) is None
    assert wants_server(page.read_text())


def test_shell_commands_and_their_expected_output(page: Path) -> None:
    cmds = shell_commands(blocks(page)[3])
    assert [(c.line, c.text) for c in cmds] == [
        (20, "curl -s localhost:1337/x  -d '{}'"),
        (24, "clipper apps"),
    ]
    assert cmds[0].expect is not None and output_matches(cmds[0].expect, '{"a": 1, "b": 2}\n')
    assert cmds[1].expect is None


def test_expected_output_ignores_whitespace_and_dots_match_anything() -> None:
    assert python_expectation("x = 1\nprint(x)  # -> 1\n") == " 1"
    assert output_matches("{'a': 1, ...}", "{'a': 1, 'b': [2, 3]}\n")
    assert not output_matches("{'a': 2, ...}", "{'a': 1, 'b': 2}")
    assert python_expectation("print(1)\n") is None


def test_ports_are_replaced_as_whole_numbers() -> None:
    code = "LocalContainerManager(query_port=1337); curl localhost:1338/x; 13370; v1.1337"
    assert substitute_ports(code, {1337: 5, 1338: 6}) == (
        "LocalContainerManager(query_port=5); curl localhost:6/x; 13370; v1.1337"
    )


def test_only_this_projects_commands_run() -> None:
    assert is_project_command("clipper apps --json")
    assert is_project_command("curl -s localhost:1337/hello/predict -d '{}'")
    assert is_project_command("python examples/ab_bandit.py")
    assert not is_project_command("curl https://example.com")
    assert not is_project_command("pip install clipper_core")
    assert not is_project_command("python -m bench noop")
    assert Block("p.md", 3, "bash", "x\n").where == "p.md:3"
