"""Typed strategy options: built from Python values or KEY=VALUE text, checked before anything is opened."""

import pytest

from nas.cli import main
from nas.strategies import OptionError, StrategyError, describe_options, strategy_config
from nas.strategies.evolution import EvolutionConfig, RegularizedEvolutionConfig
from nas.strategies.options import NoOptions, option_types, parse_value
from nas.strategies.optuna_samplers import NSGA2Config
from nas.strategies.rl import ReinforceConfig


def test_text_options_become_a_typed_config():
    config = strategy_config("evolution", ["population=8", "mutate-prob=0.25"])
    assert config == EvolutionConfig(population=8, mutate_prob=0.25)
    assert strategy_config("nsga2", ["mutation_prob=none"]) == NSGA2Config(mutation_prob=None)
    assert strategy_config("nsga2", ["mutation_prob=0.1"]).mutation_prob == 0.1
    assert strategy_config("rl", ["lr=1", "policy=lstm"]) == ReinforceConfig(lr=1.0, policy="lstm")
    assert strategy_config("random", []) == NoOptions()
    assert strategy_config("regularized-evolution", {"population": 4, "sample_size": 2}) == \
        RegularizedEvolutionConfig(population=4, sample_size=2)


def test_values_are_read_by_the_field_type():
    assert parse_value("3", int) == 3 and isinstance(parse_value("3", float), float)
    assert parse_value("no", bool) is False and parse_value("None", float | None) is None
    assert parse_value("16,none,24", tuple[int | None, ...]) == (16, None, 24)
    with pytest.raises(ValueError):
        parse_value("3.5", int)
    assert option_types(EvolutionConfig) == {"population": "int", "parents_ratio": "float", "mutation_ratio": "float",
                                             "mutate_prob": "float"}


@pytest.mark.parametrize("pairs, message", [
    (["popsize=3"], "evolution: unknown option(s) popsize; the options of evolution are population (int, default "
                    "100), parents_ratio (float, default 0.25), mutation_ratio (float, default 0.5), mutate_prob "
                    "(float, default 0.1)"),
    (["population=many"], "evolution: option population = 'many' is not int; the options of evolution are"),
    (["population=2.5"], "evolution: option population = '2.5' is not int"),
    (["population=1"], "evolution: population must be at least 2 (got 1); the options of evolution are"),
    (["population"], "evolution: --option 'population' is not KEY=VALUE"),
])
def test_bad_options_name_the_strategy_its_options_and_their_types(pairs, message):
    with pytest.raises(OptionError) as err:
        strategy_config("evolution", pairs)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, StrategyError)


def test_a_strategy_without_options_says_so():
    with pytest.raises(OptionError, match="random: unknown option.s. population; random takes no options"):
        strategy_config("random", ["population=3"])
    assert describe_options("random", NoOptions) == "random takes no options"


@pytest.mark.parametrize("option, expected", [
    ("popsize=3", "evolution: unknown option(s) popsize; the options of evolution are population (int"),
    ("population=3.5", "evolution: option population = '3.5' is not int"),
])
def test_hwnas_search_refuses_a_bad_option_before_opening_anything(trained_supernet, tmp_path, capsys, option,
                                                                   expected):
    run = tmp_path / "search"
    code = main(["search", "--supernet", str(trained_supernet), "--run-dir", str(run), "--budget", "4", "--no-progress",
                 "--option", option])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.startswith("hwnas: error: ") and expected in err and len(err.strip().splitlines()) == 1
    assert not (run / "study.db").exists() and not run.exists()
