"""Bad input through the real console script: one line naming the problem, exit 2, no traceback."""
import pytest

from conftest import free_port, run_cli


def assert_clean_error(res, *needles):
    assert res.returncode == 2, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    err = [l for l in res.stderr.splitlines() if l.startswith("sslpipe: error:")]
    assert len(err) == 1, res.stderr
    for n in needles:
        assert n in err[0], err[0]
    assert "training:" not in res.stdout        # nothing heavy started


def test_missing_corpus_path(tmp_path):
    res = run_cli("pretrain", "--set", "data.corpus=/no/such/path", cwd=tmp_path, timeout=120)
    assert_clean_error(res, "/no/such/path")
    assert not (tmp_path / "mlflow.db").exists()


def test_unknown_key_and_wrong_type(tmp_path):
    assert_clean_error(run_cli("pretrain", "--set", "train.max_stepz=3", cwd=tmp_path), "train.max_stepz")
    assert_clean_error(run_cli("pretrain", "--set", "train.max_steps=many", cwd=tmp_path),
                       "train.max_steps")
    assert_clean_error(run_cli("pretrain", "--config", "nope", cwd=tmp_path), "nope")


@pytest.mark.parametrize("content", [b"", b"   \n\n \t\n"])
def test_empty_corpus(tmp_path, content):
    f = tmp_path / "empty.txt"
    f.write_bytes(content)
    res = run_cli("pretrain", "--config", "tiny", "--set", f"data.corpus={f}", cwd=tmp_path, timeout=120)
    assert_clean_error(res, str(f))


def test_unreachable_mlflow_server_fails_before_training(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    res = run_cli("pretrain", "--config", "tiny", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri},
                  timeout=120)
    assert_clean_error(res, uri, "MLFLOW_TRACKING_URI")


def test_help_lists_commands_and_config_keys(tmp_path):
    res = run_cli("pretrain", "--help", cwd=tmp_path)
    assert res.returncode == 0 and "--set" in res.stdout and "--config" in res.stdout
    res = run_cli("--help", cwd=tmp_path)
    assert res.returncode == 0 and "masking.ratio" in res.stdout and "data.corpus" in res.stdout


def test_bad_model_settings_and_resume(tmp_path):
    assert_clean_error(run_cli("pretrain", "--config", "tiny", "--set", "model.arch=nosuchmodel",
                               cwd=tmp_path, timeout=120), "model.arch", "nosuchmodel")
    assert_clean_error(run_cli("pretrain", "--config", "tiny", "--set", "model.init_from=/no/model",
                               cwd=tmp_path, timeout=120), "model.init_from", "/no/model")
    assert_clean_error(run_cli("pretrain", "--resume", cwd=tmp_path, timeout=120), "no run to resume")
    assert_clean_error(run_cli("pretrain", "--resume", "ghost", cwd=tmp_path, timeout=120), "ghost")
    assert_clean_error(run_cli("pretrain", "--set", "train.precision=fp16", cwd=tmp_path), "train.precision")
