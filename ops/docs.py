"""Render the configuration table (README) and ``.env.example`` from ``common.settings``.

``python -m ops.docs update`` rewrites both, ``check`` says which one drifted; a test fails
when either drifts from the settings, so the documentation cannot lie.
"""

from __future__ import annotations

import sys
from pathlib import Path

from common.envparse import ROOT
from common.settings import SECTIONS, all_variables

SECTION_TITLES = {
    "CommonSettings": "General", "KafkaSettings": "Kafka", "SalesforceSettings": "Salesforce",
    "ConnectorSettings": "Source connector", "WhmcsSettings": "WHMCS",
    "WorkerSettings": "Provisioning worker", "SinkSettings": "Salesforce sink",
}


def _default(value: object) -> str:
    if value is None:
        return "**required**"
    if isinstance(value, Path):
        try:
            return str(value.relative_to(ROOT)) or "."
        except ValueError:
            return str(value)
    if str(value).startswith("Secret("):
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if str(value) != "" else "—"


def table() -> str:
    import dataclasses

    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for section in SECTIONS:
        title = SECTION_TITLES.get(section.__name__, section.__name__)
        lines.append(f"| **{title}** | | |")
        for f in dataclasses.fields(section):  # type: ignore[arg-type]
            name = f.metadata["env"]
            row = next(r for r in all_variables() if r[0] == name)
            secret = "**Secret** (never logged). " if row[3] else ""
            lines.append(f"| `{name}` | {_default(row[2])} | {secret}{row[1]} |")
    return "\n".join(lines) + "\n"


def env_example() -> str:
    import dataclasses

    out = ["# sfprov settings. Copy to .env and fill in. With SF_CLIENT_ID unset, `make up`",
           "# runs against the local Salesforce and WHMCS sandboxes and sets the SF_*/WHMCS_*",
           "# values itself. Every variable, its default and meaning: README, Configuration.", ""]
    for section in SECTIONS:
        out.append(f"# --- {SECTION_TITLES.get(section.__name__, section.__name__)}")
        for f in dataclasses.fields(section):  # type: ignore[arg-type]
            name = f.metadata["env"]
            row = next(r for r in all_variables() if r[0] == name)
            default = _default(row[2])
            value = "" if default in ("**required**", "—") else default
            out.append(f"# {row[1]}")
            out.append(f"#{name}={value}" if row[2] is not None else f"{name}=")
        out.append("")
    return "\n".join(out)


START, END = "<!-- config-table:start -->", "<!-- config-table:end -->"


def readme_with_table(text: str) -> str:
    """The README text with the configuration table between its markers regenerated."""
    head, rest = text.split(START)
    _, tail = rest.split(END)
    return head + START + "\n" + table() + END + tail


USAGE = """usage: python -m ops.docs [table | env | update | check]
  table   print the README's configuration table
  env     print .env.example
  update  regenerate both in place (README between its markers, .env.example)
  check   exit 1, naming the file, if either is not what update would write
"""


def main(argv: list[str] | None = None, root: Path = ROOT) -> int:
    args = sys.argv[1:] if argv is None else argv
    what = args[0] if args else "table"
    readme, example = root / "README.md", root / ".env.example"
    if what == "update":
        readme.write_text(readme_with_table(readme.read_text()))
        example.write_text(env_example())
        return 0
    if what == "check":
        stale = [path.name for path, want in ((readme, readme_with_table(readme.read_text())),
                                              (example, env_example()))
                 if path.read_text() != want]
        for name in stale:
            sys.stderr.write(f"{name} is out of date: run python -m ops.docs update\n")
        return 1 if stale else 0
    if what in ("table", "env") and len(args) <= 1:
        sys.stdout.write(table() if what == "table" else env_example())
        return 0
    sys.stderr.write(USAGE)
    return 2


if __name__ == "__main__":
    sys.exit(main())
