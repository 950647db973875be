import pytest

from trainkit.cli import REGISTRIES
from trainkit.errors import ConfigError
from trainkit.registry import Registry, check_kwargs


def make() -> Registry:
    r = Registry("schedule")
    for name in ("constant", "cosine", "cosine_restarts", "step"):
        r.register(name, object(), description=f"{name} schedule")
    return r


def test_names_sorted_and_glob():
    r = make()
    assert r.names() == ["constant", "cosine", "cosine_restarts", "step"]
    assert r.names("cos*") == ["cosine", "cosine_restarts"]
    assert "step" in r and "linear" not in r and len(r) == 4


def test_unknown_name_lists_close_matches_and_known_names():
    with pytest.raises(ConfigError) as e:
        make().get("cosin")
    msg = str(e.value)
    assert "unknown schedule 'cosin'" in msg
    assert "did you mean 'cosine'" in msg
    assert "known: constant, cosine, cosine_restarts, step" in msg


def test_unknown_name_without_close_match_still_lists_known():
    with pytest.raises(ConfigError, match=r"unknown schedule 'zzz' \(known: constant"):
        make().get("zzz")


def test_register_rejects_duplicates_and_uppercase():
    r = make()
    with pytest.raises(ValueError, match="already registered"):
        r.register("step", object())
    with pytest.raises(ValueError, match="lowercase"):
        r.register("Step", object())


def test_decorator_form_and_docstring_description():
    r = Registry("architecture")

    @r.register("tiny")
    def tiny(width: int = 3):
        """A tiny net.

        More text."""
        return width

    assert r.get("tiny") is tiny and r.describe("tiny") == "A tiny net."


def test_check_kwargs_names_the_bad_key_and_valid_ones():
    def f(params, lr=0.1, momentum=0.0):
        pass

    check_kwargs(f, {"lr": 1, "momentum": 0.9}, "optimizer 'sgd'", skip=("params",))
    with pytest.raises(ConfigError, match=r"has no argument 'momentun'; did you mean 'momentum'\? \(valid: lr, momentum\)"):
        check_kwargs(f, {"momentun": 0.9}, "optimizer 'sgd'", skip=("params",))
    with pytest.raises(ConfigError, match="'params'"):
        check_kwargs(f, {"params": []}, "optimizer 'sgd'", skip=("params",))


@pytest.mark.parametrize("kind", sorted(REGISTRIES))
def test_every_registry_is_listed_with_descriptions(kind, capsys):
    from trainkit.cli import main
    from trainkit.commands.common import registries as _registries

    assert main(["list", kind]) == 0
    out = capsys.readouterr().out.splitlines()
    registry = _registries()[kind]()
    assert [line.split()[0] for line in out] == registry.names()
    assert all(len(line.split(maxsplit=1)) == 2 for line in out), "every entry has a description"
