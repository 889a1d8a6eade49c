"""The parallel scheduler (tests/conftest.py): modules stay whole, vLLM modules share one, and the
longest scopes are handed out first."""
from types import SimpleNamespace

from tests.conftest import VLLM_SCOPE, _rank, pytest_xdist_make_scheduler, xdist_scope


def test_a_module_is_one_scope():
    assert xdist_scope("tests/flows/test_plan.py::test_a") == xdist_scope("tests/flows/test_plan.py::test_b[x-1]")
    assert xdist_scope("tests/flows/test_plan.py::test_a") != xdist_scope("tests/flows/test_config.py::test_a")


def test_every_engine_module_shares_the_vllm_scope():
    ids = ["tests/generation/test_vllm.py::test_batch_mode[offline]", "tests/backends/test_replicas_vllm.py::test_two",
           "tests/faults/test_fault_matrix_vllm.py::test_k"]
    assert {xdist_scope(i) for i in ids} == {VLLM_SCOPE}
    assert xdist_scope("tests/generation/test_schedule.py::test_vllm_named_test") != VLLM_SCOPE



class _Node:
    """What xdist's scheduler needs of a worker: an id, and a place to send test indexes."""

    def __init__(self, name: str):
        self.gateway, self.shutting_down, self.sent = SimpleNamespace(id=name), False, []

    def send_runtest_some(self, indexes):
        self.sent.extend(indexes)

    def shutdown(self):
        self.shutting_down = True


def test_the_scheduler_hands_out_the_longest_scopes_first():
    # A module of many short tests must not jump ahead of the long ones (xdist's default
    # reorders scopes by their number of tests).
    ids = ["tests/generation/test_vllm.py::test_a", "tests/generation/test_vllm.py::test_b",
           "tests/deployments/test_server.py::test_a", "tests/deployments/test_ui_browser.py::test_a",
           *[f"tests/flows/test_plan.py::test_{i}" for i in range(20)]]
    assert [_rank(xdist_scope(i)) for i in ids] == sorted(_rank(xdist_scope(i)) for i in ids)
    config = SimpleNamespace(option=SimpleNamespace(loadscopereorder=True), getvalue=lambda name: ["3*popen"])
    scheduler = pytest_xdist_make_scheduler(config, None)
    nodes = [_Node(f"gw{n}") for n in range(3)]
    for node in nodes:
        scheduler.add_node(node)
        scheduler.add_node_collection(node, ids)
    scheduler.schedule()
    first = [xdist_scope(ids[node.sent[0]]) for node in nodes]
    assert first == [VLLM_SCOPE, "tests/deployments/test_server.py", "tests/deployments/test_ui_browser.py"]
