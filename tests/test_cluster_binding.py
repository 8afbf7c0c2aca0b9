"""CPU core binding plans."""
import pytest

from cluster.binding import (BindingError, format_cpu_list, make_binding_plan, parse_cpu_list,
                             plan_core_binding)


def test_eight_cores_eight_ranks_one_each():
    assert plan_core_binding(8, cores=range(8)) == {r: [r] for r in range(8)}


def test_even_split_like_the_model_zoo_taskset_ranges():
    # 192 cores, 8 ranks: rank i gets i*24 .. i*24+23, as the model zoo's scripts compute
    plan = plan_core_binding(8, cores=range(192))
    assert plan[0] == list(range(0, 24)) and plan[7] == list(range(168, 192))
    assert sorted(c for cores in plan.values() for c in cores) == list(range(192))


def test_remainder_goes_to_the_first_ranks_and_nothing_is_lost():
    plan = plan_core_binding(4, cores=range(10))
    assert [len(plan[r]) for r in range(4)] == [3, 3, 2, 2]
    assert sorted(c for cores in plan.values() for c in cores) == list(range(10))


def test_two_cores_eight_ranks_share_never_empty():
    p = make_binding_plan(8, cores=[0, 1])
    assert p.shared
    assert p.cores_by_rank == {r: [r % 2] for r in range(8)}
    assert any("share" in n for n in p.notes)


def test_reserve_cores_for_the_launcher():
    p = make_binding_plan(2, cores=range(8), reserve=2)
    assert p.reserved == [0, 1]
    assert p.cores_by_rank == {0: [2, 3, 4], 1: [5, 6, 7]}
    assert p.describe()[0] == "launcher: cores 0-1"
    assert p.describe()[1] == "local rank 0: cores 2-4 (3)"
    assert p.cpu_list(1) == "5-7"


def test_reserve_everything_falls_back_to_sharing():
    p = make_binding_plan(2, cores=[0, 1], reserve=2)
    assert p.reserved == [] and p.cores_by_rank == {0: [0], 1: [1]}
    assert "launcher shares cores" in p.notes[0]


def test_non_contiguous_affinity_is_respected():
    assert plan_core_binding(2, cores=[2, 3, 8, 9]) == {0: [2, 3], 1: [8, 9]}


def test_default_uses_this_process_affinity():
    import os
    plan = plan_core_binding(1)
    assert plan[0] == sorted(os.sched_getaffinity(0))


@pytest.mark.parametrize("ranks,reserve", [(0, 0), (2, -1)])
def test_bad_input(ranks, reserve):
    with pytest.raises(BindingError):
        make_binding_plan(ranks, cores=range(4), reserve=reserve)


def test_cpu_lists():
    assert format_cpu_list([3, 0, 1, 2, 6]) == "0-3,6"
    assert parse_cpu_list("0-3,6") == [0, 1, 2, 3, 6]
    assert parse_cpu_list("5") == [5]
    with pytest.raises(BindingError, match="reversed"):
        parse_cpu_list("3-1")
