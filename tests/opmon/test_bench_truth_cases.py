"""The truth harness's combination cases: which effect costs what in the `all` case."""
from opmon.benchmarks.bench_truth import combo_effects, main
from opmon.simulators.effects import NAMES


def test_all_but_one_and_sums_of_effects_name_the_effects_to_simulate():
    assert combo_effects("all-drift").split(",") == [n for n in NAMES if n != "drift"]
    assert combo_effects("powder-arcs+gradient") == "powder-arcs,gradient"
    for not_a_combo in ("all", "drift", "all-nothing", "drift+nothing", "all-"):
        assert combo_effects(not_a_combo) is None


def test_an_unknown_case_is_refused_naming_the_combinations(capsys):
    assert main(["--cases", "all-nothing"]) == 2
    err = capsys.readouterr().err
    assert "all-nothing" in err and "all-EFFECT" in err
