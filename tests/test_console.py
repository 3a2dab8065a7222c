"""No user-supplied text is read as rich markup (issue 28, case 9): paths, corpus names, recipe
values and install hints print as they are, and a stray ``[/x]`` cannot crash a message."""

from __future__ import annotations

from conftest import tiny_recipe, write_tone

from transfer import UserError
from transfer.common.console import main_guard, say

MARKUP = 'recipe needs [target]; pip install -e ".[ssl]"; /data/[bold]modma; a [/x] tag'


def test_error_messages_print_as_they_are(capsys):
    """(before: "[target]" and "[ssl]" vanished, so the suggested install did not work, and
    "[/x]" raised MarkupError)."""

    @main_guard
    def fails() -> int:
        raise UserError(MARKUP)

    assert fails() == 2
    assert capsys.readouterr().err == f"error: {MARKUP}\n"
    say(("skipped", "yellow"), f" {MARKUP}")
    assert capsys.readouterr().err == f"skipped {MARKUP}\n"


def test_paths_with_markup_in_cli_messages(tmp_path, capsys):
    from transfer.prepare import main as prepare
    from transfer.run import main as run

    assert prepare(["--corpus", "modma", "--root", "/data/[bold]modma"]) == 2
    assert "does not exist: /data/[bold]modma\n" in capsys.readouterr().err
    missing = tmp_path / "a[" / "x]b.toml"  # the path .../a[/x]b.toml
    assert run([str(missing)]) == 2
    assert f"no recipe file {missing}\n" in capsys.readouterr().err
    path = tiny_recipe(tmp_path / "r.toml", ["scratch"])
    path.write_text(path.read_text().replace('[target]\ncorpus = "modma"', '[target]'))
    assert run([str(path), "--dry-run"]) == 2
    assert 'recipe needs [target] with corpus = "<card name or path>"' in capsys.readouterr().err


def test_file_names_with_markup_in_the_prepare_summary(tmp_path, capsys):
    from transfer.prepare import main as prepare

    for i in range(20):
        write_tone(tmp_path / "c" / f"spk{i % 2}" / "angry" / f"{i}.wav")
    write_tone(tmp_path / "c" / "spk0" / "angry" / "a[red]b.WAV")  # unmatched: suffix case
    assert prepare(["--corpus", "casia", "--root", str(tmp_path / "c"), "--seconds", "1"]) == 0
    err = capsys.readouterr().err
    assert "unmatched spk0/angry/a[red]b.WAV: suffix case" in err
    assert "e.g. spk0/angry/a[red]b.WAV" in err  # the warning
