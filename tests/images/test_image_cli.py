"""`modelrail image …` refuses bad input before building anything, saying what it accepts."""

from __future__ import annotations

import pytest

from modelrail.cli import main


@pytest.mark.parametrize(("argv", "needle"), [
    (["image", "build", "inference"], "needs the model versions"),
    (["image", "build", "controller", "iris:1"], "carries no models"),
    (["image", "build", "inference", "iris"], "NAME:VERSION"),
    (["image", "build", "inference", "nosuch:1"], "no model nosuch:1"),
])
def test_bad_arguments_exit_2_with_what_is_accepted(argv: list[str], needle: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert needle in capsys.readouterr().err


def test_an_unknown_image_kind_is_refused_by_the_parser(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["image", "build", "webserver"])
    assert exc.value.code == 2
    assert "inference" in capsys.readouterr().err
