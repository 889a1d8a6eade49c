"""The parallel scheduler's scopes (tests/conftest.py): modules stay whole, vLLM modules share one."""
from tests.conftest import VLLM_SCOPE, xdist_scope


def test_a_module_is_one_scope():
    assert xdist_scope("tests/flows/test_plan.py::test_a") == xdist_scope("tests/flows/test_plan.py::test_b[x-1]")
    assert xdist_scope("tests/flows/test_plan.py::test_a") != xdist_scope("tests/flows/test_config.py::test_a")


def test_every_engine_module_shares_the_vllm_scope():
    ids = ["tests/generation/test_vllm.py::test_batch_mode[offline]", "tests/backends/test_replicas_vllm.py::test_two",
           "tests/faults/test_fault_matrix_vllm.py::test_k"]
    assert {xdist_scope(i) for i in ids} == {VLLM_SCOPE}
    assert xdist_scope("tests/generation/test_schedule.py::test_vllm_named_test") != VLLM_SCOPE
