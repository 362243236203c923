"""The documentation keeps up with the code: every command, every config key, working links.

Fast and without a server: the command tree comes from the click app, the config keys from the
settings dataclasses in `filestore.config`, and the rest from the Markdown files themselves.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest

from filestore import config

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
CLI_MD = DOCS / "cli.md"
CONFIG_MD = DOCS / "config.md"
EXAMPLE = ROOT / "config.example.toml"

README_MAX_LINES = 250
# The two commands CI takes from the top of the README, as they must stay.
SERVE_COMMAND = (
    "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/filestore serve")
TEST_COMMAND = (
    "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/pytest")

# How docs/config.md writes the keys of the tables that are not plain sections: a named remote's
# keys as `remotes.NAME.url`, a [[plan]] rule's as `plan.prefix`.
NAME_PLACEHOLDER = "NAME"


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


# --- commands -------------------------------------------------------------------------------


def command_paths(command: click.Command, path: str) -> Iterator[str]:
    """Every command's full path below `command`, groups included ("filestore queue retry")."""
    yield path
    if isinstance(command, click.Group):
        ctx = click.Context(command, info_name=path)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None, f"{path} lists {name!r} but has no such command"
            yield from command_paths(sub, f"{path} {name}")


def documented(path: str, lines: list[str]) -> bool:
    """`path` in a heading or a table row, not as the start of a longer name
    ("filestore move" is not documented by "filestore move-to-cloud")."""
    pattern = re.compile(re.escape(path) + r"(?![\w-])")
    return any(pattern.search(line) for line in lines if line.startswith(("#", "|")))


def test_every_command_is_in_cli_md() -> None:
    from filestore.cli import main  # here: the rest of this file does not need the whole app

    commands = list(command_paths(main, "filestore"))[1:]
    assert len(commands) > 10, commands  # the walk found the tree, not just the top
    lines = CLI_MD.read_text().splitlines()
    missing = [path for path in commands if not documented(path, lines)]
    assert not missing, (
        f"{CLI_MD.relative_to(ROOT)} has no heading or table row for: {', '.join(missing)}")


# --- configuration ----------------------------------------------------------------------------


def dataclass_keys(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def settings_keys() -> list[str]:
    """Every `section.key` of the settings model: plain sections ([server]), tables of named
    sections ([remotes.NAME]: `remotes.NAME.key`) and arrays of tables ([[plan]]: `plan.key`),
    told apart by the type of each field of `config.Settings`."""
    hints = typing.get_type_hints(config.Settings, vars(config))
    keys: list[str] = []
    for field in dataclasses.fields(config.Settings):
        if field.name in config.FROM_THE_REGISTRY:
            continue  # the accounts' own storage: set through the API, not a config file
        hint = hints[field.name]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if dataclasses.is_dataclass(hint):
            prefix, cls = field.name, hint
        elif origin is dict and len(args) == 2 and dataclasses.is_dataclass(args[1]):
            prefix, cls = f"{field.name}.{NAME_PLACEHOLDER}", args[1]
        elif origin in (tuple, list) and args and dataclasses.is_dataclass(args[0]):
            prefix, cls = field.name, args[0]
        else:
            raise AssertionError(f"Settings.{field.name}: {hint} is a kind of setting this test "
                                 "does not know how to name; teach it (and docs/config.md)")
        assert isinstance(cls, type)
        keys += [f"{prefix}.{key}" for key in dataclass_keys(cls)]
    return keys


def table_keys(data: dict[str, Any]) -> list[str]:
    """`section.key` names of a parsed config file, in docs/config.md's spelling."""
    keys: list[str] = []
    for section, table in data.items():
        if isinstance(table, list):  # [[plan]]
            keys += [f"{section}.{key}" for rule in table for key in rule]
        elif section == config.REMOTES_SECTION:  # [remotes.NAME]
            keys += [f"{section}.{NAME_PLACEHOLDER}.{key}"
                     for values in table.values() for key in values]
        else:
            keys += [f"{section}.{key}" for key in table]
    return keys


def example_keys() -> tuple[list[str], list[str]]:
    """The keys config.example.toml sets, and those of its commented-out examples
    (`# [remotes.archive]`, `# url = ...`, `# [[plan]]`, ...)."""
    text = EXAMPLE.read_text()
    commented = [line[2:] for line in text.splitlines()
                 if re.fullmatch(r"# (\[\[?[\w.-]+\]\]?|[a-z_]+ = \S.*)", line)]
    return table_keys(tomllib.loads(text)), table_keys(tomllib.loads("\n".join(commented)))


def code_spans(path: Path) -> set[str]:
    return set(re.findall(r"`([^`\n]+)`", path.read_text()))


def test_every_settings_key_is_in_config_md() -> None:
    keys = settings_keys()
    assert "storage.min_free" in keys and any(k.startswith("plan.") for k in keys), keys
    spans = code_spans(CONFIG_MD)
    missing = [key for key in keys if key not in spans]
    assert not missing, (
        f"{CONFIG_MD.relative_to(ROOT)} does not name these keys as `section.key`: "
        f"{', '.join(missing)}")


def test_every_example_key_is_in_config_md() -> None:
    keys, commented = example_keys()
    assert "server.accel_redirect" in keys, keys
    spans = code_spans(CONFIG_MD)
    missing = [key for key in keys + commented if key not in spans]
    assert not missing, (
        f"{CONFIG_MD.relative_to(ROOT)} does not name these keys of "
        f"{EXAMPLE.name}: {', '.join(missing)}")


def test_config_md_tables_name_only_real_keys() -> None:
    """A key renamed or removed in the code does not linger in the tables of config.md."""
    real = set(settings_keys())
    rows = re.findall(r"^\| `([a-z_]+(?:\.[A-Za-z_]+)+)` \|", CONFIG_MD.read_text(), re.M)
    assert rows, "no key rows found in docs/config.md"
    unknown = [key for key in rows if key not in real]
    assert not unknown, f"docs/config.md documents keys the settings model lacks: {unknown}"


# --- README and links -------------------------------------------------------------------------


def test_readme_is_short() -> None:
    count = len(README.read_text().splitlines())
    assert count <= README_MAX_LINES, f"README.md has {count} lines; at most {README_MAX_LINES}"


def test_readme_begins_with_the_two_commands() -> None:
    lines = README.read_text().splitlines()
    assert lines[0].startswith("# "), "README.md must start with its title"
    fences = [n for n, line in enumerate(lines) if line.startswith("```")]
    assert len(fences) >= 4, "README.md needs the two fenced commands at its top"
    blocks = [lines[fences[i] + 1:fences[i + 1]] for i in (0, 2)]
    assert blocks == [[SERVE_COMMAND], [TEST_COMMAND]], (
        f"the first two fenced blocks of README.md must be exactly the install-and-serve and "
        f"install-and-test commands, found {blocks}")
    before = lines[1:fences[3]]
    headings = [line for line in before if line.startswith("#")]
    assert not headings, f"README.md puts {headings} before the two commands"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    return {slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def relative_links(path: Path) -> Iterator[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    text = re.sub(r"`[^`\n]*`(?!\]\()", "", text)  # code spans, but not a link's own text
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if not re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            yield target


def test_relative_links_point_to_files_that_exist() -> None:
    broken: list[str] = []
    checked = 0
    for md in markdown_files():
        for target in relative_links(md):
            checked += 1
            name, _, anchor = target.partition("#")
            dest = (md.parent / name).resolve() if name else md
            where = f"{md.relative_to(ROOT)}: {target}"
            if not dest.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{where} (no such heading)")
    assert checked > 10, "found hardly any links; is the link pattern still right?"
    assert not broken, "broken links:\n" + "\n".join(broken)
