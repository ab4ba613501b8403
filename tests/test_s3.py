"""s3:// for real: a local moto S3 server, the corpus uploaded to a bucket, read through s3fs with
the endpoint from the standard AWS environment, by the real CLI and its Ray Data stage."""
from pathlib import Path

import pytest

from conftest import run_cli

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bucket(s3_server, wikitext, shakespeare, monkeypatch_module):
    import boto3

    for k, v in s3_server.items():
        monkeypatch_module.setenv(k, v)
    s3 = boto3.client("s3", endpoint_url=s3_server["AWS_ENDPOINT_URL"])   # signed with the env's key
    s3.create_bucket(Bucket="corpus")
    s3.put_object(Bucket="corpus", Key="text/wiki.txt", Body=Path(wikitext).read_bytes())
    s3.put_object(Bucket="corpus", Key="text/shakespeare.txt", Body=Path(shakespeare).read_bytes())
    return s3_server


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def records_line(out: str) -> str:
    return [l for l in out.splitlines() if l.strip().startswith("records")][0]


def test_data_stats_reads_an_s3_prefix_like_the_local_files(tmp_path, bucket, wikitext, shakespeare):
    res = run_cli("data", "stats", "--config", "tiny", "--set", "data.corpus=s3://corpus/text/",
                  "--set", "data.max_documents=0", cwd=tmp_path, env=bucket, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "files       2 read" in res.stdout and "(OK)" in res.stdout
    local = run_cli("data", "stats", "--config", "tiny", "--set", "data.max_documents=0",
                    "--set", f"data.corpus={wikitext},{shakespeare}", cwd=tmp_path, timeout=300)
    assert local.returncode == 0
    assert records_line(res.stdout) == records_line(local.stdout)      # every record, same counts
    assert int(records_line(res.stdout).split()[1].replace(",", "")) > 8000


def test_wrong_bucket_is_one_clear_line(tmp_path, bucket):
    res = run_cli("data", "stats", "--config", "tiny", "--set", "data.corpus=s3://no-such-bucket/x/",
                  cwd=tmp_path, env=bucket, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    err = [l for l in res.stderr.splitlines() if l.startswith("sslpipe: error:")]
    assert len(err) == 1 and "s3://no-such-bucket/x/" in err[0], res.stderr[-2000:]


def test_wrong_credentials_are_one_clear_line(tmp_path, bucket):
    env = dict(bucket, AWS_ACCESS_KEY_ID="AKIAWRONGWRONGWRONG", AWS_SECRET_ACCESS_KEY="wrong")
    res = run_cli("data", "stats", "--config", "tiny", "--set", "data.corpus=s3://corpus/text/",
                  cwd=tmp_path, env=env, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    err = [l for l in res.stderr.splitlines() if l.startswith("sslpipe: error:")]
    assert len(err) == 1 and "s3://corpus/text/" in err[0] and "credentials" in err[0], res.stderr[-2000:]
