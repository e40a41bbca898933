"""Command-line errors: one clear line and exit code 2, never a traceback."""

from pathlib import Path

import pytest

from autoscaler.cli import main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CONFIG = str(EXAMPLES / "configs" / "simple1.yaml")
RECORDING = str(EXAMPLES / "replay" / "multi-node-disaggregated.csv")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--config", CONFIG, "--kubeconfig", "/nonexistent/kubeconfig", "--once"], "error: kubeconfig /nonexistent/kubeconfig not found"),
        (["explain", "--config", CONFIG, "--at", "5"], "error: --at needs --metrics"),
        (["replay", "--config", CONFIG, "--metrics", RECORDING], "matches no rule"),
    ],
)
def test_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--config", CONFIG, "--metrics-port", "99999"], "argument --metrics-port: invalid value '99999': expected a port number"),
        (["run", "--config", CONFIG, "--reload-seconds", "-1"], "argument --reload-seconds: invalid value '-1'"),
        (["explain", "--config", CONFIG, "--metrics", "x.csv", "--at", "nan"], "argument --at: invalid value 'nan'"),
    ],
)
def test_bad_option_values_rejected(argv, message, capsys):
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_kubeconfig_content(tmp_path, capsys):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    assert main(["run", "--config", CONFIG, "--kubeconfig", str(kubeconfig), "--once"]) == 2
    err = capsys.readouterr().err
    assert f"invalid Kubernetes client configuration in {kubeconfig}" in err


def test_lease_timings_checked(kube_emulator, capsys):
    argv = ["run", "--config", CONFIG, "--kubeconfig", str(kube_emulator.kubeconfig), "--once", "--leader-elect",
            "--lease-duration-seconds", "1", "--renew-deadline-seconds", "5"]
    assert main(argv) == 2
    assert "lease timings must satisfy" in capsys.readouterr().err


def test_replay_out_unwritable(tmp_path, capsys):
    argv = ["replay", "--config", str(EXAMPLES / "configs" / "multi-node-disaggregated.yaml"),
            "--metrics", RECORDING, "--out", str(tmp_path)]
    assert main(argv) == 2
    assert "cannot write --out" in capsys.readouterr().err
