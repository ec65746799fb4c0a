"""The README cannot drift from the code: its commands and its settings table are checked."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path

import click

from profilehook.cli import main
from profilehook.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
CommandPath = tuple[tuple[str, ...], click.Command]


def _commands() -> list[str]:
    block = re.search(r"```sh\n(.*?)```", README, re.S)
    assert block, "README has no sh block"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_the_first_two_commands_run_the_service_and_the_tests():
    assert _commands()[:2] == ["make run", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^run: \$\(STAMP\)\n.*serve --quickstart", makefile, re.M)
    assert re.search(r"^test: \$\(STAMP\)\n", makefile, re.M)


def test_ci_runs_exactly_the_readme_test_command():
    assert "exec make test" in (ROOT / ".ci" / "run").read_text()


def test_the_settings_table_lists_every_setting_with_its_default():
    rows = dict(re.findall(r"^\| `(PROFILEHOOK_[A-Z_]+)` \| ([^|]+) \|", README, re.M))
    described = Settings().describe()
    assert set(rows) == {name for name, _, _ in described}
    for name, value, _ in described:
        shown = rows[name].strip().strip("`")
        assert shown == ("(empty)" if value == "" else value) or (
            name == "PROFILEHOOK_DATA_DIR" and shown == "./profilehook-data"
        ), name


def test_every_cli_command_in_the_readme_exists():
    from click.testing import CliRunner

    from profilehook.cli import main

    block = re.findall(r"^profilehook ([a-z]+)(?: ([a-z][a-z-]*))?", README, re.M)
    assert block
    for group, sub in block:
        args = [group, sub, "--help"] if sub else [group, "--help"]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, (args, result.output)
        assert "Example" in result.output, f"{args}: help should end with an example"


# -- the command block of "Command line" against the click group itself ----------------------

OPTION = re.compile(r"(?<![\w-])(--?[a-z][a-z-]*)")


def _command_block() -> list[str]:
    section = README.split("\n## Command line\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "the Command line section has no sh block"
    return [line.split(" #")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def _walk(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[CommandPath]:
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            if not sub.hidden:
                yield from _walk(sub, (*path, name))


def _resolve(line: str) -> CommandPath:
    """The command a block line runs: the longest run of subcommand names after the program."""
    words = line.split()
    assert words[0] == "profilehook", line
    path: tuple[str, ...] = ()
    command: click.Command = main
    for word in words[1:]:
        if not isinstance(command, click.Group) or word not in command.commands:
            break
        path, command = (*path, word), command.commands[word]
    return path, command


def _option_names(command: click.Command) -> set[str]:
    return {
        name
        for param in command.params
        if isinstance(param, click.Option)
        for name in (*param.opts, *param.secondary_opts)
    }


def test_the_command_block_lists_every_command_of_the_cli() -> None:
    """Every command the CLI has (new ones included) has a line in the README's block."""
    listed = {_resolve(line)[0] for line in _command_block()}
    leaves = {path for path, command in _walk(main) if not isinstance(command, click.Group)}

    assert leaves, "the walk found no commands"
    assert sorted(" ".join(path) for path in leaves - listed) == []


def test_every_option_in_the_command_block_exists_on_its_command() -> None:
    for line in _command_block():
        path, command = _resolve(line)
        written = set(OPTION.findall(line.split(" ".join(path), 1)[1] if path else line))
        if isinstance(command, click.Group):  # only the program's own line: its global flags
            assert not path and line.endswith("COMMAND ..."), line
        unknown = written - _option_names(command)
        assert not unknown, f"{line!r}: `profilehook {' '.join(path)}` has no {sorted(unknown)}"
        required = {p.opts[0] for p in command.params if isinstance(p, click.Option) and p.required}
        assert required <= written, f"{line!r} leaves out required {sorted(required - written)}"


def test_the_global_line_has_every_global_option() -> None:
    global_line = next(line for line in _command_block() if not _resolve(line)[0])
    written = set(OPTION.findall(global_line))

    assert written == _option_names(main) - {"-h", "--help"}


def test_the_readme_names_exactly_the_settings_that_have_a_flag() -> None:
    """Which settings have a flag is said once, truthfully: computed from every command."""
    sentence = re.search(r"settings with a flag:(.*?)A flag wins", README, re.S)
    assert sentence, "the Command line section should say which settings have a flag"
    claimed = set(re.findall(r"`(--[a-z-]+)`", sentence.group(1)))
    settings = {f.name for f in dataclasses.fields(Settings)}
    flags = {
        param.opts[0]
        for _, command in _walk(main)
        for param in command.params
        if isinstance(param, click.Option) and param.name in settings
    }

    assert claimed == flags


# -- the module map of "How it is built" against the package itself ---------------------------


def _module_map() -> list[str]:
    section = README.split("\n## How it is built\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```\nsrc/profilehook/\n(.*?)```", section, re.S)
    assert block, "How it is built has no src/profilehook/ block"
    return re.findall(r"^  (\S+\.py|\S+/)(?:\s|$)", block.group(1), re.M)


def _package_modules() -> set[str]:
    """Every module of the package as the map names it: a subpackage by its folder."""
    package = ROOT / "src" / "profilehook"
    names = set()
    for path in package.rglob("*.py"):
        relative = path.relative_to(package).as_posix()
        if relative.endswith("/__init__.py"):
            relative = relative.removesuffix("__init__.py")
        names.add(relative)
    return names


def test_how_it_is_built_lists_every_module_once_and_no_other() -> None:
    listed = _module_map()
    assert len(listed) == len(set(listed)), "a module is listed twice"
    assert sorted(_package_modules() - set(listed)) == [], "modules missing from the map"
    assert sorted(set(listed) - _package_modules()) == [], "the map lists modules that do not exist"


OUTSIDE_REFERENCE = re.compile(
    r"\bSPEC\b|PERF_NOTES|\.\./shared|\bissue \d+|\b(?:was|now) \d[\d.,]* ?(?:ms|µs)"
)


def test_the_code_refers_only_to_documents_in_the_repository_and_keeps_no_benchmark_history():
    """The product spec, the team's notes and the issues are not in the repository: the code says
    what it means where it is, or points to README.md, RELIABILITY.md or benchmarks/README.md
    (where the measurements live, not in comments)."""
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sorted((ROOT / "src").rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if OUTSIDE_REFERENCE.search(line)
    ]
    assert found == []
