"""Config reload: a changed valid file is applied, an invalid one is logged and ignored."""

import os
import time

import yaml

from autoscaler.config import load_config
from autoscaler.controller import Controller
from autoscaler.kube import KubeClient
from autoscaler.runtime import ConfigWatcher
from metrics.source import StaticSource


def rule(max_replicas: int) -> dict:
    return {
        "targets": [
            {
                "name": "decode",
                "podCliqueSets": {"namespace": "default"},
                "level": "clique",
                "clique": {"name": "decode"},
                "maxReplicas": max_replicas,
                "policies": [{"name": "kv-cache"}],
            }
        ]
    }


def rewrite(path, text: str) -> None:
    path.write_text(text)
    # Move the modification time forward, so a rewrite within one clock tick is still seen.
    stamp = time.time() + 1
    os.utime(path, (stamp, stamp))


def test_reload_keeps_last_valid_config(kube_emulator, tmp_path, caplog):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(rule(4)))
    controller = Controller(load_config(path), KubeClient(kube_emulator.api_client()), StaticSource())
    watcher = ConfigWatcher(str(path), controller, interval_seconds=60)

    assert watcher.check() is False

    rewrite(path, yaml.safe_dump(rule(0)))
    assert watcher.check() is False
    assert controller.config.targets[0].max_replicas == 4
    assert "invalid; keeping the last valid one" in caplog.text
    assert "targets[0].maxReplicas" in caplog.text

    rewrite(path, yaml.safe_dump(rule(9)))
    assert watcher.check() is True
    assert controller.config.targets[0].max_replicas == 9


def test_reload_ignores_missing_file(kube_emulator, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(rule(4)))
    controller = Controller(load_config(path), KubeClient(kube_emulator.api_client()), StaticSource())
    watcher = ConfigWatcher(str(path), controller, interval_seconds=60)

    path.unlink()
    assert watcher.check() is False
    assert controller.config.targets[0].max_replicas == 4
