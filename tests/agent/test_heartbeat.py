"""The heartbeat in-process against the fake portal: failures never raise, the portal's
interval is obeyed, and datasets are described again only when the files change."""

import numpy as np

from agent import __version__
from agent.heartbeat import Heartbeat
from agent.portal import PortalClient
from tests.agent.conftest import NODE_TOKEN


def write_npz(path, n=20):
    np.savez(path, X=np.zeros((n, 3), dtype=np.float32), y=np.arange(n) % 2)


def make_heartbeat(portal, data_dir, token=NODE_TOKEN, described=None):
    def describe(path):
        described.append(path)
        return [{"name": p.stem} for p in sorted(path.glob("*.npz"))]
    return Heartbeat(client=PortalClient(portal.url, token), data_dir=data_dir, interval=5.0,
                     **({"describe": describe} if described is not None else {}))


def test_a_heartbeat_reports_the_real_datasets(portal, tmp_path):
    write_npz(tmp_path / "mine.npz")
    assert make_heartbeat(portal, tmp_path).beat()
    [beat] = portal.heartbeats
    assert beat["version"] == __version__
    assert beat["datasets"] == [{"name": "mine", "format": "npz", "n_examples": 20,
                                 "n_features": 3, "num_classes": 2}]


def test_failures_are_reported_not_raised(portal, tmp_path):
    portal.inject["heartbeat"] = [503]
    heartbeat = make_heartbeat(portal, tmp_path)
    assert heartbeat.beat() is False
    assert heartbeat.beat() is True
    assert make_heartbeat(portal, tmp_path, token="wrong").beat() is False
    portal.close()
    assert heartbeat.beat() is False


def test_the_portal_sets_the_interval_within_bounds(portal, tmp_path):
    heartbeat = make_heartbeat(portal, tmp_path)
    for answer, expected in ((2.5, 2.5), (0.0, 0.1), (10**9, 3600.0), ("soon", 3600.0)):
        portal.heartbeat_interval_s = answer
        heartbeat.beat()
        assert heartbeat.interval == expected


def test_datasets_are_described_again_only_when_files_change(portal, tmp_path):
    described = []
    heartbeat = make_heartbeat(portal, tmp_path, described=described)
    write_npz(tmp_path / "a.npz")
    heartbeat.beat(), heartbeat.beat()
    assert len(described) == 1
    write_npz(tmp_path / "b.npz")
    heartbeat.beat()
    assert len(described) == 2
    assert portal.heartbeats[-1]["datasets"] == [{"name": "a"}, {"name": "b"}]
