"""Assemble is a pure function of shards: it publishes with every network connection refused.

The run is the scripted fixture run (sample, generate, rate through the real flow); its
shards are copied, the judge endpoint is switched to a remote OpenAI-compatible one (so a
judge request, if assemble sent one, would have to open a socket), and the stage's publish
task runs with `socket.connect` refusing every address, loopback included, and every name
lookup failing; each attempt is recorded, since a backend turns a refused connection into
an error row rather than an exception.
"""
from __future__ import annotations

import shutil
import socket

import pyarrow.parquet as pq
import pytest

from flows.config import load_config
from flows.stage_assemble import assemble_key, publish_dataset
from flows.ultrafeedback import ultrafeedback
from storage.shards import ShardStore
from tasks.rating.config import JudgeEndpoint
from tests.paths import SCRIPTED_CONFIG

CFG = SCRIPTED_CONFIG


@pytest.fixture(scope="module")
def rated_run(prefect_harness, tmp_path_factory):
    out = tmp_path_factory.mktemp("offline") / "run"
    cfg = load_config(CFG, output=str(out))
    ultrafeedback(config=cfg, stages=["sample", "generate", "rate"])
    return out, cfg


@pytest.fixture
def no_network(monkeypatch):
    """Refuse and record every connection but those to the Prefect test API: Prefect's log
    and event workers ship to it from background threads of this process at any moment,
    which says nothing about what assemble does."""
    from urllib.parse import urlsplit

    from prefect.settings import PREFECT_API_URL

    api = urlsplit(PREFECT_API_URL.value())
    prefect_api = (api.hostname, api.port)
    attempts: list = []
    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex

    def refuse(self, address, *args):
        if isinstance(address, tuple) and tuple(address[:2]) == prefect_api:
            return (connect if not args else connect_ex)(self, address)
        attempts.append(address)
        raise OSError(f"network closed in this test: connect to {address!r}")

    lookup = socket.getaddrinfo

    def no_lookup(host, *args, **kwargs):
        if host == prefect_api[0]:
            return lookup(host, *args, **kwargs)
        attempts.append(host)
        raise socket.gaierror(f"network closed in this test: lookup of {host!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", lambda self, address: refuse(self, address, "ex"))
    monkeypatch.setattr(socket, "getaddrinfo", no_lookup)
    return attempts


def test_the_closed_network_records_what_tries_to_connect(no_network):
    """The check below can fail: a judge-like request is refused and recorded."""
    from openai import OpenAI

    client = OpenAI(base_url="http://192.0.2.1/v1", api_key="none", max_retries=0, timeout=5)
    with pytest.raises(Exception):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert any("192.0.2.1" in str(attempt) for attempt in no_network), no_network


def test_assemble_publishes_with_the_network_closed(rated_run, tmp_path, no_network):
    src, cfg = rated_run
    out = tmp_path / "run"
    shutil.copytree(src, out)
    # An address literal (TEST-NET-1): a request would reach connect() without a name lookup.
    remote = JudgeEndpoint(name="remote", kind="openai_compatible", model="gpt-4o", base_url="http://192.0.2.1/v1")
    rating = cfg.rating.model_copy(update={"endpoints": [*cfg.rating.endpoints, remote], "judge": "remote"})
    cfg = cfg.model_copy(update={"output": str(out), "rating": rating})
    store = ShardStore(str(out))
    refs = {stage: sorted(store.refs(stage), key=lambda r: r.shard_id) for stage in ("sample", "generate", "rate", "audit")}
    assert refs["rate"], "the fixture run rated nothing"

    result = publish_dataset.fn(cfg, refs, assemble_key(refs, cfg), [])

    assert no_network == []  # nothing even tried to connect (a backend would record a refusal as data)
    assert result["action"] == "written"
    assert (out / "README.md").is_file()
    dataset = pq.read_table(out / "dataset" / "train-00000-of-00001.parquet")
    rated = [c for row in dataset.column("completions").to_pylist() for c in row if c["overall_score"] is not None]
    assert dataset.num_rows > 0 and rated  # the published rows carry the judge's ratings from the shards
    assert store.done("assemble", "published") is not None


@pytest.mark.parametrize("override", ["publish.position_bias=true", "publish.position_bias_sample=4"])
def test_position_bias_setting_fails_naming_the_field_and_the_audit(override):
    from flows.config import ConfigError

    with pytest.raises(ConfigError, match=r"publish\.position_bias: removed.*audit\.enabled"):
        load_config(CFG, [override])
