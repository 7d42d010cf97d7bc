"""NATS_URL as a list, the replica count it implies, and the cluster node configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from ops.natscluster import ClusterNode, NatsCluster, cluster_size, embedded_nats
from ops.natsd import NatsServer
from services.common.bus import dlq_stream_config, events_stream_config
from services.common.natsurl import nats_servers, stream_replicas
from services.common.settings import load_nats_config


def test_nats_url_is_a_comma_separated_list() -> None:
    assert nats_servers("nats://a:4222") == ["nats://a:4222"]
    assert nats_servers(" nats://a:1, nats://b:2,,nats://c:3 ") == [
        "nats://a:1", "nats://b:2", "nats://c:3"]


@pytest.mark.parametrize(("url", "want"), [("nats://a", 1), ("a,b", 2), ("a,b,c", 3),
                                           ("a,b,c,d,e", 3)])
def test_replicas_follow_the_servers_named(url: str, want: int,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHOP_NATS_REPLICAS", raising=False)
    assert stream_replicas(url) == want


def test_replicas_setting_wins_and_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_NATS_REPLICAS", "3")
    configured = load_nats_config().replicas
    assert stream_replicas("nats://nats:4222", configured) == 3  # one name before a cluster
    monkeypatch.setenv("SHOP_NATS_REPLICAS", "6")
    with pytest.raises(ValueError, match="SHOP_NATS_REPLICAS must be 1 to 5"):
        load_nats_config()


def test_stream_configs_carry_the_replicas() -> None:
    assert events_stream_config(3).num_replicas == 3
    assert dlq_stream_config(3).num_replicas == 3
    assert events_stream_config().num_replicas == 1


def test_cluster_size_refuses_two_nodes() -> None:
    assert cluster_size("") == 1
    assert cluster_size("3") == 3
    for bad in ("2", "0", "x", "9"):
        with pytest.raises(ValueError, match="NATS_CLUSTER"):
            cluster_size(bad)


def test_each_node_has_a_name_a_store_routes_and_fsync_always(tmp_path: Path) -> None:
    cluster = embedded_nats(tmp_path, port=14222, nodes=3, route_port=16222)
    assert isinstance(cluster, NatsCluster)
    assert cluster.url == ",".join(f"nats://127.0.0.1:{p}" for p in (14222, 14223, 14224))
    confs = []
    for i, node in enumerate(cluster.nodes, 1):
        node._write_config()
        confs.append(node.conf_path.read_text())
        conf = confs[-1]
        assert f'server_name: "shop-nats-{i}"' in conf
        assert f'listen: "127.0.0.1:{16221 + i}"' in conf
        assert f'store_dir: "{tmp_path / f"node-{i}" / "jetstream"}"' in conf
        assert "sync_interval: always" in conf
        for p in (16222, 16223, 16224):
            assert f'"nats-route://127.0.0.1:{p}"' in conf
    assert len(set(confs)) == 3
    single = embedded_nats(tmp_path / "one", port=4222, nodes=1)
    assert isinstance(single, NatsServer) and not isinstance(single, ClusterNode)
