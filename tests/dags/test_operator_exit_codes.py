"""The stage operators fail a task without retries only when the stage says retrying cannot help.

Each case runs a tiny Python application that exits with a given code: as the default stage
process (StageOperator, `python -m`) and through a real spark-submit (ReportingSparkSubmitOperator).
"""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from core.exit_codes import BAD_DATA, USAGE
from dags.cscnn_links import ReportingSparkSubmitOperator, StageOperator

APP = "import sys\nsys.exit(int(sys.argv[1]))\n"


def _stage(tmp_path, code: int) -> None:
    (tmp_path / "exit_with.py").write_text(APP)
    op = StageOperator(task_id=f"exit_{code}", module="exit_with", arguments=[code],
                       env={"PYTHONPATH": str(tmp_path)})
    op.execute({})


@pytest.mark.parametrize("code", [BAD_DATA, USAGE])
def test_a_stage_process_exiting_bad_data_or_usage_fails_without_retry(tmp_path, code):
    with pytest.raises(AirflowFailException, match=f"exited with code {code}.*not retried"):
        _stage(tmp_path, code)


def test_a_stage_process_exiting_otherwise_keeps_its_retries(tmp_path):
    with pytest.raises(AirflowException, match="exited with code 1") as info:
        _stage(tmp_path, 1)
    assert not isinstance(info.value, AirflowFailException)
    _stage(tmp_path, 0)


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
