"""The Spark operator fails a task without retries only when the stage says retrying cannot help.

Each case runs a real spark-submit of a tiny Python application that exits with a given code.
"""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from core.exit_codes import BAD_DATA, USAGE
from dags.cscnn_links import ReportingSparkSubmitOperator

APP = "import sys\nsys.exit(int(sys.argv[1]))\n"


def _submit(tmp_path, monkeypatch, code: int) -> None:
    app = tmp_path / "exit_with.py"
    app.write_text(APP)
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_EXIT_TEST", '{"conn_type": "spark", "host": "local[1]"}')
    op = ReportingSparkSubmitOperator(task_id=f"exit_{code}", application=str(app), conn_id="spark_exit_test",
                                      application_args=[str(code)])
    op.execute({})


@pytest.mark.parametrize("code", [BAD_DATA, USAGE])
def test_bad_data_or_usage_exit_fails_without_retry(tmp_path, monkeypatch, code):
    with pytest.raises(AirflowFailException, match=f"exited with code {code}.*not retried"):
        _submit(tmp_path, monkeypatch, code)


def test_other_exit_codes_keep_their_retries(tmp_path, monkeypatch):
    with pytest.raises(AirflowException, match="Error code is: 1") as info:
        _submit(tmp_path, monkeypatch, 1)
    assert not isinstance(info.value, AirflowFailException)


def test_success_returns(tmp_path, monkeypatch):
    _submit(tmp_path, monkeypatch, 0)
